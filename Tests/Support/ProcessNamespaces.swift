import Foundation

/// Host processes in the pid namespace `namespace` (as `readlink /proc/PID/ns/pid` gives it), with
/// their name and state.
public func processes(inPidNamespace namespace: String) -> [String] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.filter { $0.allSatisfy(\.isNumber) }.compactMap { pid in
        guard (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/pid")) == namespace else {
            return nil
        }
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let lines = status.split(separator: "\n").filter { $0.hasPrefix("Name") || $0.hasPrefix("State") }
        return ([pid] + lines.map(String.init)).joined(separator: " ")
    }
}
