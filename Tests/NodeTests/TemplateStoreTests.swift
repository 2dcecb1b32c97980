import Foundation
import HangarNode
import HangarShared
import Testing

@Suite("Template store and digest, real folders")
struct TemplateStoreTests {
    @Test("the digest is stable, survives a copy, and changes with a byte, a mode or a name")
    func digest() throws {
        let source = try TemplateFixture.busyboxRoot(marker: "one")
        defer { try? FileManager.default.removeItem(atPath: source) }
        let first = try TemplateDigest.of(directory: source)
        #expect(first.hash.hasPrefix("sha256:") && first.hash.count == 7 + 64)
        #expect(try TemplateDigest.of(directory: source) == first)
        #expect(first.entries == 8)  // bin/, busybox, 5 links to it, marker.txt

        let store = TemplateStore(stateDirectory: try TemplateFixture.stateDirectory())
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let manifest = try store.importDirectory(source, name: "copy")
        #expect(manifest.hash == first.hash)

        try Data("two".utf8).write(to: URL(fileURLWithPath: source + "/marker.txt"))
        let changedContent = try TemplateDigest.of(directory: source)
        #expect(changedContent.hash != first.hash)
        chmod(source + "/marker.txt", 0o600)
        let changedMode = try TemplateDigest.of(directory: source)
        #expect(changedMode.hash != changedContent.hash)
        try FileManager.default.moveItem(atPath: source + "/marker.txt", toPath: source + "/other.txt")
        #expect(try TemplateDigest.of(directory: source).hash != changedMode.hash)
    }

    @Test("import, list, look up, verify and remove a directory template")
    func lifecycle() throws {
        let source = try TemplateFixture.busyboxRoot(marker: "hello")
        defer { try? FileManager.default.removeItem(atPath: source) }
        let store = TemplateStore(stateDirectory: try TemplateFixture.stateDirectory())
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        #expect(store.names() == ["host"])
        let manifest = try store.importDirectory(source, name: "bb", env: ["GREETING": "hi"])
        #expect(manifest.source == "dir:\(source)")
        #expect(manifest.sizeBytes > 100_000)  // busybox itself
        #expect(store.names() == ["host", "bb"])
        let template = try store.template(named: "bb")
        #expect(template.rootfs == store.root + "/bb/rootfs")
        #expect(template.env == ["GREETING": "hi"])
        #expect(try String(contentsOfFile: template.rootfs! + "/marker.txt", encoding: .utf8) == "hello")
        #expect(try store.verify("bb").matches)

        #expect(throws: TemplateError.self) { try store.importDirectory(source, name: "bb") }
        try store.remove("bb")
        #expect(store.names() == ["host"])
        #expect(throws: TemplateError.self) { try store.template(named: "bb") }
        // Nothing half-built stays behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.root).isEmpty)
    }

    @Test(
        "bad names and path traversal are rejected",
        arguments: ["../etc", "..", ".hidden", "a/b", "A", "", "host", "x\u{0}y", String(repeating: "a", count: 64)]
    )
    func badNames(name: String) throws {
        let store = TemplateStore(stateDirectory: try TemplateFixture.stateDirectory())
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let source = try TemplateFixture.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: source) }
        #expect(throws: TemplateError.self) { try store.importDirectory(source, name: name) }
        if !name.isEmpty && name != "host" {
            #expect(throws: TemplateError.self) { try store.template(named: name) }
        }
        #expect(!TemplateName.isValid(name) || name == "host")
    }

    @Test("a manifest naming another template is refused, and a broken store folder is not listed")
    func foreignManifest() throws {
        let source = try TemplateFixture.busyboxRoot(marker: "x")
        defer { try? FileManager.default.removeItem(atPath: source) }
        let store = TemplateStore(stateDirectory: try TemplateFixture.stateDirectory())
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        try store.importDirectory(source, name: "real")
        try FileManager.default.copyItem(atPath: store.root + "/real", toPath: store.root + "/fake")
        #expect(throws: TemplateError.self) { try store.template(named: "fake") }
        #expect(store.names() == ["host", "real"])
    }
}
