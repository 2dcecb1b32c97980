import Foundation
import HangarScheduler
import HangarShared
import Testing

@Suite("Submission validation")
struct RequestValidatorTests {
    let validator = RequestValidator()

    func request(_ argv: [String] = ["/bin/echo", "hi"]) -> Hangar_V1_SubmitRequest {
        var request = Hangar_V1_SubmitRequest()
        request.argv = argv
        return request
    }

    func rejection(_ request: Hangar_V1_SubmitRequest, tenant: String = "acme") -> Hangar_V1_Rejected? {
        if case .failure(let rejection) = validator.validate(request, tenant: tenant) { return rejection.rejected }
        return nil
    }

    @Test("a plain argv request gets defaults resolved")
    func defaults() throws {
        let submission = try validator.validate(request(), tenant: "acme").get()
        #expect(submission.spec.runtime == "process")
        #expect(submission.spec.template == "host")
        #expect(submission.spec.limits.timeoutMs == 10_000)
        #expect(submission.spec.limits.outputBytes == 1 << 20)
        #expect(submission.spec.argv == ["/bin/echo", "hi"])
    }

    @Test("code becomes the interpreter's argv")
    func code() throws {
        var request = Hangar_V1_SubmitRequest()
        request.code.language = "python"
        request.code.source = "print(6*7)"
        let submission = try validator.validate(request, tenant: "acme").get()
        #expect(submission.spec.argv == ["/usr/bin/python3", "-c", "print(6*7)"])
    }

    @Test("files_out globs: * stays in a directory, ** crosses directories")
    func filesOutGlobs() {
        #expect(FilesOutGlob.matches("out/*.txt", path: "out/a.txt"))
        #expect(!FilesOutGlob.matches("out/*.txt", path: "out/deep/a.txt"))
        #expect(FilesOutGlob.matches("out/**.txt", path: "out/deep/a.txt"))
        #expect(!FilesOutGlob.matches("*.txt", path: "out/a.txt"))
        #expect(FilesOutGlob.problem(with: "out/*.txt") == nil)
        #expect(FilesOutGlob.problem(with: "out/../x") != nil)
    }

    @Test("each bad field is rejected with its name", arguments: BadField.all)
    func badField(_ bad: BadField) throws {
        var request = request()
        bad.mutate(&request)
        let rejected = try #require(rejection(request))
        #expect(rejected.field == bad.field)
        #expect(!rejected.message.isEmpty)
    }

    @Test("files_out for microvm is UNSUPPORTED, naming the runtime; other runtimes take it")
    func filesOutMicroVM() throws {
        var asked = request()
        asked.runtime = "microvm"
        asked.filesOut = ["out/*.txt"]
        let rejected = try #require(rejection(asked))
        #expect(rejected.reason == .unsupported)
        #expect(rejected.field == "files_out")
        #expect(rejected.message.contains("microvm"))
        for runtime in ["process", "container", "gvisor"] {
            asked.runtime = runtime
            #expect(rejection(asked) == nil, "\(runtime)")
        }
    }

    @Test("a limit above the maximum is rejected, not clamped")
    func limitAboveMaximum() throws {
        var bad = request()
        bad.limits.timeoutMs = 300_001
        let rejected = try #require(rejection(bad))
        #expect(rejected.reason == .limitExceeded)
        #expect(rejected.message.contains("300000"))
        var fine = request()
        fine.limits.timeoutMs = 300_000
        #expect(rejection(fine) == nil)
    }

    @Test("the tenant token is checked", arguments: ["", "a.b", "a*", String(repeating: "x", count: 65)])
    func badTenant(tenant: String) throws {
        let rejected = try #require(rejection(request(), tenant: tenant))
        #expect(rejected.field == "tenant")
    }
}

struct BadField: Sendable, CustomTestStringConvertible {
    let field: String
    let mutate: @Sendable (inout Hangar_V1_SubmitRequest) -> Void

    init(_ field: String, _ mutate: @escaping @Sendable (inout Hangar_V1_SubmitRequest) -> Void) {
        self.field = field
        self.mutate = mutate
    }

    var testDescription: String { field }

    static let all: [BadField] = [
        BadField("argv") { r in r.argv = [] },
        BadField("argv") { r in r.argv = ["/bin/echo", "a\u{0}b"] },
        BadField("code") { r in
            r.code.language = "python"
            r.code.source = "1"
        },
        BadField("runtime") { r in r.runtime = "docker" },
        BadField("files_out[0]") { r in r.filesOut = ["../*"] },
        BadField("network.allow[1]") { r in
            r.network.mode = .networkAllowlist
            r.network.allow = ["10.0.0.0/8", "10.0.0.300/32"]
        },
        BadField("network.allow") { r in r.network.mode = .networkAllowlist },
        BadField("network.mode") { r in
            r.runtime = "gvisor"
            r.network.mode = .networkAllowlist
            r.network.allow = ["10.0.0.0/8"]
        },
        BadField("files_out[1]") { r in r.filesOut = ["ok/*.txt", "/etc/*"] },
        BadField("files_out[0]") { r in r.filesOut = ["a//b"] },
        BadField("files_out") { r in r.filesOut = Array(repeating: "*", count: 65) },
        BadField("template") { r in r.template = "../ubuntu" },
        BadField("template") { r in r.template = "Ubuntu" },
        BadField("limits.timeout_ms") { r in r.limits.timeoutMs = 3_600_000 },
        BadField("limits.output_bytes") { r in r.limits.outputBytes = 1 << 40 },
        BadField("limits.memory_bytes") { r in r.limits.memoryBytes = 1 << 50 },
        BadField("env") { r in r.env = ["1BAD": "x"] },
        BadField("cwd") { r in r.cwd = "relative/dir" },
        BadField("cwd") { r in r.cwd = "/tmp/../etc" },
        BadField("files[0].path") { r in
            var file = Hangar_V1_FileIn()
            file.path = "../escape"
            r.files = [file]
        },
        BadField("files[0].path") { r in
            var file = Hangar_V1_FileIn()
            file.path = "/etc/passwd"
            r.files = [file]
        },
        BadField("priority") { r in r.priority = 42 },
        BadField("request_id") { r in r.requestID = "has space" },
        BadField("stdin") { r in r.stdin = Data(count: 9 << 20) },
    ]
}
