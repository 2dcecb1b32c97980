import Foundation
import Glibc

/// A user namespace for one container, owned by a host uid of the job's own (``SandboxUsers``)
/// instead of root, which runc joins rather than creating one itself.
///
/// runc creates the namespaces as root, and the kernel counts per-user budgets of everything inside
/// a user namespace against its owner in the parent namespace: `fs.inotify.max_user_instances`
/// (128), watches, nested user namespaces. A job holding 128 inotify instances would leave host root
/// — the node itself, and every other container — without any. Here an unprivileged holder process
/// running as the job's uid creates the namespace (so that uid owns it), the node writes its id
/// maps from outside (root may map any range), and the bundle names `/proc/<holder>/ns/user`.
///
/// One consequence: the node holds no capability over a namespace it does not own, and on a host
/// whose root lacks `CAP_SYS_RESOURCE` runc can no longer set the container's rlimits from outside
/// (`prlimit` on the container's init fails). The caller then starts runc with the rlimits already
/// lowered (``OCIEngine``'s launcher), and the container inherits them.
final class OwnedUserNamespace: Sendable {
    /// `/proc/<holder pid>/ns/user`, for the bundle's `linux.namespaces`.
    let path: String
    /// The host uid that owns the namespace.
    let owner: UInt32
    /// The holder's pid; with `network`, its network namespace (owned by this user namespace) is
    /// the container's.
    let pid: Int32
    private let holder: SandboxProcess
    /// The node's end of the pipe the holder waits on; closing it ends the holder.
    private let lifeline: Int32

    private static let setprivPath = "/usr/bin/setpriv"
    private static let unsharePath = "/usr/bin/unshare"
    /// How long the holder may take to start.
    static let startTimeout = Duration.seconds(5)

    private init(path: String, owner: UInt32, pid: Int32, holder: SandboxProcess, lifeline: Int32) {
        self.path = path
        self.owner = owner
        self.pid = pid
        self.holder = holder
        self.lifeline = lifeline
    }

    /// Starts a holder as `owner` in a new user namespace and maps `mapping` into it; with
    /// `network`, also in a new network namespace that the user namespace owns. The holder is
    /// noted in `ledger` while it runs.
    static func create(
        owner: UInt32,
        mapping: OCIUserNamespace,
        network: Bool = false,
        ledger: SandboxLedger?
    ) async throws(OCIRuntimeError) -> OwnedUserNamespace {
        let ready: (read: Int32, write: Int32)
        let life: (read: Int32, write: Int32)
        do throws(WarmError) {
            ready = try PipeIO.pipe()
            do throws(WarmError) {
                life = try PipeIO.pipe()
            } catch {
                close(ready.read)
                close(ready.write)
                throw error
            }
        } catch {
            throw OCIRuntimeError("cannot create a user namespace: \(error.description)")
        }
        // setpriv and unshare exec in turn, so the shell keeps the first pid: it reports it, then
        // waits until the node closes its end of fd 4 (or dies).
        let command = SandboxCommand(
            executable: setprivPath,
            arguments: [
                "setpriv", "--reuid=\(owner)", "--regid=\(owner)", "--clear-groups", "--",
                unsharePath, "--user",
            ] + (network ? ["--net"] : []) + [
                "--", "/bin/sh", "-c", "echo \"r$$\" >&3; exec 3>&-; read -r line <&4",
            ],
            environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            timeout: .seconds(365 * 24 * 3600),
            outputLimit: 4096,
            inheritedFiles: [ready.write, life.read],
            ledger: ledger
        )
        let spawned = Result { () throws(SandboxSpawnError) in try SandboxProcess(command) }
        close(ready.write)
        close(life.read)
        let holder: SandboxProcess
        do {
            holder = try spawned.get()
        } catch {
            close(ready.read)
            close(life.write)
            throw OCIRuntimeError("cannot start the user namespace holder: \(error.description)")
        }
        func fail(_ message: String) async -> OCIRuntimeError {
            close(life.write)
            holder.kill()
            let result = try? await holder.wait()
            let stderr = result.map { String(decoding: $0.stderr.prefix(300), as: UTF8.self) } ?? ""
            return OCIRuntimeError(message + (stderr.isEmpty ? "" : ": \(stderr)"))
        }
        let started = await PipeIO.awaitByte(on: ready.read, timeout: startTimeout)
        var text = [UInt8](repeating: 0, count: 32)
        let count = started ? Glibc.read(ready.read, &text, text.count) : 0
        close(ready.read)
        let digits = String(decoding: text.prefix(max(count, 0)), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard started, let pid = Int32(digits), pid > 0 else {
            throw await fail("the user namespace holder did not start")
        }
        let map = "0 \(mapping.hostID) \(mapping.size)\n"
        for file in ["uid_map", "gid_map"] {
            let target = "/proc/\(pid)/\(file)"
            guard let handle = FileHandle(forWritingAtPath: target) else {
                throw await fail("cannot open \(target)")
            }
            do {
                try handle.write(contentsOf: Data(map.utf8))
                try handle.close()
            } catch {
                try? handle.close()
                throw await fail("cannot write \(target): \(error.localizedDescription)")
            }
        }
        return OwnedUserNamespace(
            path: "/proc/\(pid)/ns/user",
            owner: owner,
            pid: pid,
            holder: holder,
            lifeline: life.write
        )
    }

    /// Ends the holder. Call once the container is gone (or has joined: the namespace lives on as
    /// long as any process is in it).
    func remove() async {
        close(lifeline)
        _ = try? await holder.wait()
    }
}
