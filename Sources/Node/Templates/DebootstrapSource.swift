import Foundation

/// A Debian root filesystem made by `debootstrap --variant=minbase`, for `hangar template build
/// NAME --from debian:SUITE --packages a,b`.
public struct DebootstrapSource: Sendable, Equatable {
    /// The Debian suite, e.g. `bookworm`.
    public var suite: String
    /// Extra packages (`--include`).
    public var packages: [String]
    /// The archive to fetch from; must be one apt on this machine can reach.
    public var mirror: String

    /// Where debootstrap is installed by the `debootstrap` package.
    public static let executable = "/usr/sbin/debootstrap"

    /// Parses `debian:SUITE`.
    /// - Throws: ``TemplateError`` for any other form, or a package name that is not a Debian one.
    public init(from: String, packages: [String], mirror: String? = nil) throws(TemplateError) {
        let parts = from.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, parts[0] == "debian", !parts[1].isEmpty,
            parts[1].allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") })
        else {
            throw TemplateError("--from must be debian:SUITE (e.g. debian:bookworm), got \"\(from)\"")
        }
        for package in packages
        where package.isEmpty
            || !package.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || "+-.".contains($0)) })
        {
            throw TemplateError("\"\(package)\" is not a Debian package name")
        }
        suite = parts[1]
        self.packages = packages
        self.mirror = mirror ?? Self.aptMirror()
    }

    /// What the manifest records as the source.
    public var description: String {
        "debian:\(suite)" + (packages.isEmpty ? "" : " (\(packages.joined(separator: ",")))")
    }

    /// Runs debootstrap into `rootfs`, then deletes the downloaded packages.
    public func populate(_ rootfs: String) throws {
        guard access(Self.executable, X_OK) == 0 else {
            throw TemplateError("\(Self.executable) is missing: apt-get install debootstrap")
        }
        var arguments = ["--variant=minbase"]
        if !packages.isEmpty { arguments.append("--include=" + packages.joined(separator: ",")) }
        arguments += [suite, rootfs, mirror]
        try TemplateCommand.run(Self.executable, arguments, what: "debootstrap \(suite) from \(mirror)")
        let archives = rootfs + "/var/cache/apt/archives"
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: archives)) ?? []
        where entry.hasSuffix(".deb") {
            try? FileManager.default.removeItem(atPath: archives + "/" + entry)
        }
    }

    /// The first Debian archive apt uses here (`URIs:` of a deb822 source or a `deb` line ending in
    /// `/debian`), else `http://deb.debian.org/debian`: debootstrap must use a mirror apt can reach.
    static func aptMirror() -> String {
        var files = ["/etc/apt/sources.list"]
        let directory = "/etc/apt/sources.list.d"
        for entry in ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
        where entry.hasSuffix(".sources") || entry.hasSuffix(".list") {
            files.append(directory + "/" + entry)
        }
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ").map(String.init)
                let candidates = words.first == "URIs:" || words.first == "deb" ? words.dropFirst() : []
                if let uri = candidates.first(where: { $0.hasPrefix("http") && $0.hasSuffix("/debian") }) { return uri }
            }
        }
        return "http://deb.debian.org/debian"
    }
}
