import Foundation
import Glibc
import HangarShared

/// Finding qemu, the guest kernel and the agent, and measuring what the guest needs to know.
extension MicroVMHost {
    static func qemuVersion(_ path: String, ledger: SandboxLedger?) async throws(MicroVMError) -> String {
        let command = SandboxCommand(
            executable: path,
            arguments: ["qemu-system-x86_64", "--version"],
            timeout: .seconds(10),
            outputLimit: 4096,
            ledger: ledger
        )
        guard let result = try? await SandboxProcess.run(command), result.termination == .exited(0) else {
            throw MicroVMError("\(path) --version failed")
        }
        let first = String(decoding: result.stdout, as: UTF8.self).split(separator: "\n").first ?? ""
        let version = first.split(separator: " ").first { $0.first?.isNumber == true } ?? "?"
        return "qemu \(version)"
    }

    /// The kernel image and its release, e.g. ("/boot/vmlinuz-6.1.0-57-cloud-amd64", "6.1.0-57-cloud-amd64").
    static func kernel(_ configured: String?) throws(MicroVMError) -> (String, String) {
        if let configured {
            let name = (configured as NSString).lastPathComponent
            guard name.hasPrefix("vmlinuz-") else {
                throw MicroVMError("kernel \(configured) must be named vmlinuz-RELEASE (to find its modules)")
            }
            return (configured, String(name.dropFirst("vmlinuz-".count)))
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        let releases = names.filter { $0.hasPrefix("vmlinuz-") }.map { String($0.dropFirst("vmlinuz-".count)) }
            .filter { FileManager.default.fileExists(atPath: "/lib/modules/\($0)/modules.dep") }
            .sorted { $0.compare($1, options: .numeric) == .orderedAscending }
        guard let release = releases.last else {
            throw MicroVMError(
                "no guest kernel: no /boot/vmlinuz-* with its modules (apt-get install linux-image-cloud-amd64)"
            )
        }
        guard access("/boot/vmlinuz-" + release, R_OK) == 0 else {
            throw MicroVMError("cannot read /boot/vmlinuz-\(release)")
        }
        return ("/boot/vmlinuz-" + release, release)
    }

    static func agent(_ configured: String?) throws(MicroVMError) -> String {
        if let configured { return configured }
        if let path = ProcessInfo.processInfo.environment["HANGAR_GUEST_AGENT"] { return path }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let sibling = (executable as NSString).deletingLastPathComponent + "/hangar-guest-agent"
        guard access(sibling, X_OK) == 0 else {
            throw MicroVMError(
                "the guest agent is missing: no hangar-guest-agent next to \(executable) and no "
                    + "HANGAR_GUEST_AGENT (swift build --product hangar-guest-agent)"
            )
        }
        return sibling
    }

    static func tscKHz(_ agent: String, ledger: SandboxLedger?) async throws(MicroVMError) -> UInt64 {
        let command = SandboxCommand(
            executable: agent,
            arguments: ["hangar-guest-agent", "--tsc-khz"],
            timeout: .seconds(5),
            outputLimit: 256,
            ledger: ledger
        )
        let result = try? await SandboxProcess.run(command)
        let text = result.map { String(decoding: $0.stdout, as: UTF8.self) } ?? ""
        guard let khz = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)), khz > 0 else {
            throw MicroVMError("\(agent) --tsc-khz failed: \(text)")
        }
        return khz
    }

    static func memoryFile(_ data: Data) throws(MicroVMError) -> Int32 {
        let fd = GlibcExtensions.anonymousFile(named: "hangar-initramfs")
        guard fd >= 0 else { throw MicroVMError("memfd_create: \(String(cString: strerror(errno)))") }
        let ok = Descriptor.writeAll(fd, data)
        guard ok else {
            close(fd)
            throw MicroVMError("cannot write the initramfs: \(String(cString: strerror(errno)))")
        }
        return fd
    }
}
