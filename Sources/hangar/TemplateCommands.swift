import ArgumentParser
import Foundation
import HangarNode
import HangarShared

/// `hangar template build|list|verify|remove`: the directory templates of a node's state folder.
struct TemplateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "template",
        abstract: "Build and list the root filesystem templates of a node (in its state folder).",
        discussion: """
            Templates live on the node: run these on the node's machine, with the node's --state-dir.
            A running node reports new templates in its next heartbeat; jobs pick one with --template.
            """,
        subcommands: [
            TemplateBuildCommand.self, TemplateListCommand.self, TemplateVerifyCommand.self,
            TemplateRemoveCommand.self,
        ]
    )
}

/// Where the node's state folder is, for the template commands.
struct StateDirectoryOption: ParsableArguments {
    @Option(help: "The node's state folder; templates are in STATE/templates.")
    var stateDir: String = TemplateStore.defaultStateDirectory

    var store: TemplateStore { TemplateStore(stateDirectory: stateDir) }
}

struct TemplateBuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build a template: debootstrap a Debian root (--from debian:SUITE) or copy a folder (--from-dir).",
        discussion: """
            hangar template build py --from debian:bookworm --packages python3
            hangar template build tools --from-dir ./rootfs --env LANG=C.UTF-8
            debootstrap uses --variant=minbase and the Debian mirror apt uses here (or --mirror).
            """
    )

    @OptionGroup var state: StateDirectoryOption
    @Argument(help: "Template name (\(TemplateName.rule)).")
    var name: String
    @Option(help: "debian:SUITE, e.g. debian:bookworm.")
    var from: String?
    @Option(help: "Extra Debian packages, comma-separated (with --from).")
    var packages: String = ""
    @Option(help: "Debian mirror for debootstrap (default: the one apt uses).")
    var mirror: String?
    @Option(help: "A folder holding a root filesystem, copied into the store.")
    var fromDir: String?
    @Option(name: .customLong("env"), help: "A default environment variable KEY=VALUE for jobs (repeatable).")
    var env: [String] = []

    func validate() throws {
        guard (from == nil) != (fromDir == nil) else {
            throw ValidationError("give exactly one of --from and --from-dir")
        }
        guard TemplateName.isValid(name), name != TemplateName.host else {
            throw ValidationError("the name must be \(TemplateName.rule), and not 'host'")
        }
    }

    func run() throws {
        let store = state.store
        let environment = try parseLabels(env)
        let started = ContinuousClock.now
        let manifest: TemplateManifest
        do {
            if let fromDir {
                manifest = try store.importDirectory(fromDir, name: name, env: environment)
            } else {
                let packageList = packages.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                let source = try DebootstrapSource(from: from!, packages: packageList, mirror: mirror)
                printError("debootstrap \(source.suite) from \(source.mirror) (a few minutes)...")
                manifest = try store.build(name: name, env: environment, source: source.description) { rootfs in
                    try source.populate(rootfs)
                }
            }
        } catch {
            throw CLIError("template build: \(error)")
        }
        print(
            "built \(manifest.name) \(manifest.hash) \(describeSize(manifest.sizeBytes)) in \(ContinuousClock.now - started)"
        )
    }
}

struct TemplateListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the node's templates.")

    @OptionGroup var state: StateDirectoryOption
    @Flag(help: "Print JSON (the manifests).")
    var json = false

    func run() throws {
        let manifests = state.store.list()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(manifests), as: UTF8.self))
            return
        }
        var rows = [
            ["NAME", "HASH", "SIZE", "CREATED", "SOURCE"],
            ["host", "-", "-", "-", "the host's /usr, /lib*, /bin, /etc"],
        ]
        let formatter = ISO8601DateFormatter()
        for manifest in manifests {
            rows.append([
                manifest.name, String(manifest.hash.prefix(19)), describeSize(manifest.sizeBytes),
                formatter.string(from: Date(timeIntervalSince1970: Double(manifest.createdMs) / 1000)), manifest.source,
            ])
        }
        print(formatTable(rows))
    }
}

struct TemplateVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Recompute a template's content hash and compare it with its manifest (exit 1 if they differ)."
    )

    @OptionGroup var state: StateDirectoryOption
    @Argument var name: String

    func run() throws {
        let (matches, actual) = try state.store.verify(name)
        print(matches ? "\(name) intact: \(actual)" : "\(name) CHANGED since it was built: now \(actual)")
        if !matches { throw ExitCode(1) }
    }
}

struct TemplateRemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Delete a template.")

    @OptionGroup var state: StateDirectoryOption
    @Argument var name: String

    func run() throws {
        try state.store.remove(name)
        print("removed \(name)")
    }
}

/// Node options about its state folder and warm pools, shared by `hangar node` and `hangar dev`.
struct NodeStateOptions: ParsableArguments {
    @Option(help: "The node's state folder (templates in STATE/templates, the scheduler term in STATE/scheduler-term).")
    var stateDir: String = TemplateStore.defaultStateDirectory
    @Option(
        name: .customLong("pool"),
        help: "A warm pool RUNTIME:TEMPLATE=MIN:MAX, e.g. process:host=2:8 (repeatable)."
    )
    var pools: [String] = []

    func apply(to config: inout NodeConfig) throws {
        try Self.apply(stateDir: stateDir, pools: pools, to: &config)
    }

    /// Sets `config`'s template store and warm pools.
    static func apply(stateDir: String, pools: [String], to config: inout NodeConfig) throws {
        config.templates = TemplateStore(stateDirectory: stateDir)
        config.stateDirectory = stateDir
        do {
            config.pools = try pools.map { text throws(WarmError) in try WarmPoolSpec.parse(text) }
        } catch {
            throw ValidationError(error.description)
        }
    }
}

/// `process:host 2/0/8` per pool, for `hangar nodes`.
func poolSummary(_ heartbeat: Hangar_V1_NodeHeartbeat) -> String {
    let pools = heartbeat.pools.map { "\($0.runtime):\($0.template) \($0.ready)/\($0.warming)/\($0.max)" }
    return pools.isEmpty ? "-" : pools.joined(separator: ",")
}

/// "1.2 GiB", "340.5 MiB", "12 KiB".
func describeSize(_ bytes: UInt64) -> String {
    let value = Double(bytes)
    if bytes >= 1 << 30 { return String(format: "%.1f GiB", value / Double(1 << 30)) }
    if bytes >= 1 << 20 { return String(format: "%.1f MiB", value / Double(1 << 20)) }
    return "\(bytes / 1024) KiB"
}
