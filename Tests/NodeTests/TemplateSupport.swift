import Foundation
import HangarNode

/// Test templates: real folders, imported into a real store under a fresh temp folder.
enum TemplateFixture {
    /// A fresh state folder (0755, so sandboxed users can enter the store below it).
    static func stateDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-templates-\(UUID().uuidString)"
        ).path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        chmod(path, 0o755)
        return path
    }

    /// A root filesystem of busybox-static alone (`/bin/busybox`, `/bin/sh` and `/bin/cat` links
    /// to it) plus `/marker.txt` holding `marker`; no `/usr`, no `/etc`. Needs Debian's
    /// busybox-static at `/bin/busybox`.
    static func busyboxRoot(marker: String) throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-template-src-\(UUID().uuidString)"
        ).path
        try FileManager.default.createDirectory(atPath: root + "/bin", withIntermediateDirectories: true)
        chmod(root, 0o755)
        guard FileManager.default.fileExists(atPath: "/bin/busybox") else {
            throw TemplateError("/bin/busybox is missing: apt-get install busybox-static")
        }
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: root + "/bin/busybox")
        for tool in ["sh", "cat", "ls", "echo", "sleep"] {
            try FileManager.default.createSymbolicLink(atPath: root + "/bin/" + tool, withDestinationPath: "busybox")
        }
        try Data(marker.utf8).write(to: URL(fileURLWithPath: root + "/marker.txt"))
        return root
    }
}
