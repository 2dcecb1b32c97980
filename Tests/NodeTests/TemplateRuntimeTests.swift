import Foundation
import HangarNode
import HangarShared
import Testing

@Suite("Directory templates in real sandboxes", .serialized)
struct TemplateRuntimeTests {
    /// A store holding `bb`: busybox-static, `/marker.txt` and a default `GREETING`.
    static func store(marker: String) throws -> TemplateStore {
        let source = try TemplateFixture.busyboxRoot(marker: marker)
        defer { try? FileManager.default.removeItem(atPath: source) }
        let store = TemplateStore(stateDirectory: try TemplateFixture.stateDirectory())
        try store.importDirectory(source, name: "bb", env: ["GREETING": "from-template", "KEEP": "template"])
        return store
    }

    static let probe = [
        "/bin/sh", "-c",
        "cat /marker.txt; echo; echo $GREETING $KEEP; ls /usr 2>&1 || echo no-usr; ls /etc 2>&1 || echo no-etc",
    ]

    @Test("a process job in a directory template sees that root, its env, and not the host's /usr or /etc")
    func processSeesTemplate() async throws {
        let marker = "marker-\(uniqueTag())"
        let store = try Self.store(marker: marker)
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let runtime = ProcessRuntime(templates: store)
        let outcome = await runtime.run(
            job(Self.probe) {
                $0.template = "bb"
                $0.env = ["KEEP": "job"]
            },
            jobID: "tmpl-\(uniqueTag())"
        )
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        let lines = text(outcome.stdout).split(separator: "\n").map(String.init)
        #expect(lines.first == marker)
        #expect(lines.contains("from-template job"))
        #expect(lines.contains("no-usr"))
        #expect(lines.contains("no-etc"))
        // The same job on the host template sees the host's /usr and no marker.
        let host = await runtime.run(
            job(["/bin/sh", "-c", "ls /usr >/dev/null && cat /marker.txt"]),
            jobID: "tmpl-host"
        )
        #expect(host.status == .failed)
    }

    @Test("a template the node does not hold is an ERROR that names it")
    func missingTemplate() async throws {
        let store = TemplateStore(stateDirectory: try TemplateFixture.stateDirectory())
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let outcome = await ProcessRuntime(templates: store).run(
            job(["/bin/true"]) { $0.template = "nope" },
            jobID: "t"
        )
        #expect(outcome.status == .error)
        #expect(outcome.message.contains("'nope'"))
    }

    @Test("a container job in a directory template sees that root", arguments: OCIKind.allCases)
    func containerSeesTemplate(kind: OCIKind) async throws {
        let marker = "marker-\(uniqueTag())"
        let store = try Self.store(marker: marker)
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let runtime: any Runtime =
            switch kind {
            case .runc: ContainerRuntime(directories: kind.directories, templates: store)
            case .gvisor: GVisorRuntime(directories: kind.directories, templates: store)
            }
        let outcome = await runtime.run(
            OCITest.job(Self.probe) { $0.template = "bb" },
            jobID: OCITest.jobID("tmpl")
        )
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        let lines = text(outcome.stdout).split(separator: "\n").map(String.init)
        #expect(lines.first == marker)
        #expect(lines.contains("from-template template"))
        #expect(lines.contains("no-usr"))
        #expect(lines.contains("no-etc"))
    }
}
