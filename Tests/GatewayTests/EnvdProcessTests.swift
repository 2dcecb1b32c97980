import Foundation
import Glibc
import HangarClient
import HangarClusterTestSupport
import HangarGateway
import Testing

/// envd's process service through the gateway, against a real cluster: the wire as the `e2b` SDK
/// speaks it (Connect over HTTP/1.1, JSON).
@Suite("Gateway envd: process.Process on a real sandbox", .serialized, .enabled(if: geteuid() == 0))
struct EnvdProcessTests {
    @Test(
        "Start streams output and the exit code; a non-zero exit; the user; background + List + Connect + SendSignal; stdin; bad calls"
    )
    func processes() async throws {
        try await EnvdHarness.with { env in
            // Output of both streams, the environment and cwd given, and the exit code, as events.
            let hello = try await env.stream(
                "process.Process/Start",
                try EnvdHarness.startJSON(
                    "echo $GREETING from $(pwd); echo oops >&2",
                    cwd: "/tmp",
                    envs: ["GREETING": "hi"]
                )
            )
            #expect(hello.status == 200 && hello.end.isEmpty, "\(String(decoding: hello.body, as: UTF8.self))")
            let helloEvents = try EnvdHarness.events(hello)
            guard case .start(let started) = helloEvents.first?.event else {
                Issue.record("the first event is not start: \(helloEvents)")
                return
            }
            #expect(started.pid > 0)
            let helloOutcome = EnvdHarness.outcome(helloEvents)
            #expect(helloOutcome.stdout == "hi from /tmp\n" && helloOutcome.stderr == "oops\n", "\(helloOutcome)")
            #expect(helloOutcome.end?.exited == true && helloOutcome.end?.exitCode == 0)
            #expect(helloOutcome.end?.status == "exit status 0")

            // A non-zero exit is an end event, not an error.
            let failing = EnvdHarness.outcome(
                try EnvdHarness.events(
                    try await env.stream("process.Process/Start", try EnvdHarness.startJSON("exit 7"))
                )
            )
            #expect(failing.end?.exitCode == 7 && failing.end?.exited == true && failing.end?.status == "exit status 7")

            // The user from Authorization: Basic base64(user:).
            let root = EnvdHarness.outcome(
                try EnvdHarness.events(
                    try await env.stream("process.Process/Start", try EnvdHarness.startJSON("id -u"), user: "root")
                )
            )
            #expect(root.stdout == "0\n", "\(root)")
            let user = EnvdHarness.outcome(
                try EnvdHarness.events(
                    try await env.stream("process.Process/Start", try EnvdHarness.startJSON("id -u"))
                )
            )
            #expect(user.stdout == "1000\n", "\(user)")
            let stranger = try await env.stream(
                "process.Process/Start",
                try EnvdHarness.startJSON("true"),
                user: "mallory"
            )
            #expect(stranger.status == 401)

            // A process outlives nothing it should not: one started in the background (its Start
            // stream running in a task) is listed, can be connected to, and killed.
            let sleeperCommand = "echo ready; : > /home/user/sleeper-ready; sleep 300"
            let sleeper = Task {
                try await env.stream("process.Process/Start", try EnvdHarness.startJSON(sleeperCommand))
            }
            var sleeperPid: UInt32 = 0
            try await waitUntil("the background command is listed", within: .seconds(20)) {
                let list = try await env.unary("process.Process/List", "{}")
                let processes = try Process_ListResponse(jsonUTF8Data: list.body).processes
                if let found = processes.first(where: { $0.config.args.last == sleeperCommand }) {
                    sleeperPid = found.pid
                    #expect(found.config.cmd == "/bin/bash" && found.config.args == ["-l", "-c", sleeperCommand])
                    return true
                }
                return false
            }
            // Listed as soon as bash starts; its login start-up may still be running: kill it only
            // once it has printed (the file is made after the echo).
            try await waitUntil("the background command has printed", within: .seconds(20)) {
                try await env.unary("filesystem.Filesystem/Stat", "{\"path\":\"/home/user/sleeper-ready\"}").status
                    == 200
            }
            let connectBody = "{\"process\":{\"pid\":\(sleeperPid)}}"
            let connected = Task { try await env.stream("process.Process/Connect", connectBody) }
            // SIGKILL to its group (bash and sleep) ends it; both streams get the end.
            let kill = try await env.unary(
                "process.Process/SendSignal",
                "{\"process\":{\"pid\":\(sleeperPid)},\"signal\":\"SIGNAL_SIGKILL\"}"
            )
            #expect(kill.status == 200, "\(kill.text)")
            let sleeperOutcome = EnvdHarness.outcome(try EnvdHarness.events(try await sleeper.value))
            #expect(sleeperOutcome.stdout == "ready\n")
            #expect(sleeperOutcome.end?.exited == false && sleeperOutcome.end?.exitCode == -1, "\(sleeperOutcome)")
            #expect(sleeperOutcome.end?.status == "signal: killed")
            let connectedEvents = try EnvdHarness.events(try await connected.value)
            guard case .start(let connectStart) = connectedEvents.first?.event else {
                Issue.record("Connect did not begin with a start event: \(connectedEvents)")
                return
            }
            #expect(connectStart.pid == sleeperPid)
            #expect(EnvdHarness.outcome(connectedEvents).end?.exitCode == -1)
            // Connecting to an ended command answers its end at once.
            let late = try await env.stream("process.Process/Connect", "{\"process\":{\"pid\":\(sleeperPid)}}")
            #expect(EnvdHarness.outcome(try EnvdHarness.events(late)).end?.exitCode == -1)
            // No such process: not_found, for Connect and for a signal (the SDK's kill() then says False).
            let missing = try await env.stream("process.Process/Connect", "{\"process\":{\"pid\":999999}}")
            #expect((missing.end["error"] as? [String: Any])?["code"] as? String == "not_found", "\(missing.end)")
            let missingKill = try await env.unary(
                "process.Process/SendSignal",
                "{\"process\":{\"pid\":999999},\"signal\":\"SIGNAL_SIGKILL\"}"
            )
            #expect(
                missingKill.status == 404 && missingKill.json["code"] as? String == "not_found",
                "\(missingKill.text)"
            )

            // stdin: a command started with stdin open reads what SendInput sends until CloseStdin.
            let cat = Task {
                try await env.stream("process.Process/Start", try EnvdHarness.startJSON("cat; echo done", stdin: true))
            }
            var catPid: UInt32 = 0
            try await waitUntil("cat is listed", within: .seconds(20)) {
                let list = try await env.unary("process.Process/List", "{}")
                let processes = try Process_ListResponse(jsonUTF8Data: list.body).processes
                catPid = processes.first(where: { $0.config.args.last == "cat; echo done" })?.pid ?? 0
                return catPid != 0
            }
            let input = try await env.unary(
                "process.Process/SendInput",
                "{\"process\":{\"pid\":\(catPid)},\"input\":{\"stdin\":\"\(Data("typed\n".utf8).base64EncodedString())\"}}"
            )
            #expect(input.status == 200, "\(input.text)")
            let close = try await env.unary("process.Process/CloseStdin", "{\"process\":{\"pid\":\(catPid)}}")
            #expect(close.status == 200, "\(close.text)")
            let catOutcome = EnvdHarness.outcome(try EnvdHarness.events(try await cat.value))
            #expect(catOutcome.stdout == "typed\ndone\n" && catOutcome.end?.exitCode == 0, "\(catOutcome)")

            // Bad calls: a malformed body, a wrong token, another tenant's token, a PTY.
            let malformed = try await env.http(
                "POST",
                "/process.Process/Connect",
                headers: ["Content-Type": "application/connect+json"],
                body: Data("not an envelope".utf8)
            )
            #expect(
                malformed.status == 400 && malformed.json["code"] as? String == "invalid_argument",
                "\(malformed.text)"
            )
            let badJSON = try await env.unary("process.Process/List", "{not json")
            #expect(badJSON.status == 400)
            let wrongToken = try await env.unary("process.Process/List", "{}", token: "a.AAAA")
            #expect(wrongToken.status == 401 && wrongToken.json["code"] as? String == "unauthenticated")
            let otherTenant = env.tokens.token(.envd, tenant: "b", sandbox: env.sandbox.id)
            let theirs = try await env.stream(
                "process.Process/Start",
                try EnvdHarness.startJSON("id"),
                token: otherTenant
            )
            // Tenant b has no such sandbox: what E2B's proxy says of a sandbox that is not there.
            #expect(theirs.status == 503, "\(String(decoding: theirs.body, as: UTF8.self))")
            #expect(String(decoding: theirs.body, as: UTF8.self).contains("was not found"))
            let pty = try await env.stream("process.Process/Start", "{\"process\":{\"cmd\":\"/bin/bash\"},\"pty\":{}}")
            #expect((pty.end["error"] as? [String: Any])?["code"] as? String == "unimplemented", "\(pty.end)")
        }
    }

    @Test(
        "a gateway keeps no state: a command whose Start stream was dropped is listed, fed and connected to through another gateway with the same token"
    )
    func statelessGateway() async throws {
        try await EnvdHarness.with { env in
            let script = "read line || exit 3; [ \"$line\" = hello ] || exit 4; exit 0"
            let started = Task {
                try await env.stream("process.Process/Start", try EnvdHarness.startJSON(script, stdin: true))
            }
            var listed: UInt32 = 0
            try await waitUntil("the command is listed by the first gateway", within: .seconds(20)) {
                let list = try await env.unary("process.Process/List", "{}")
                listed =
                    try Process_ListResponse(jsonUTF8Data: list.body).processes
                    .first(where: { $0.config.args.last == script })?.pid ?? 0
                return listed != 0
            }
            // The client of the first gateway goes away mid-stream; the command goes on.
            started.cancel()
            _ = try? await started.value
            let pid = listed
            try await env.withSecondGateway { other in
                let list = try await other.unary("process.Process/List", "{}")
                #expect(try Process_ListResponse(jsonUTF8Data: list.body).processes.contains { $0.pid == pid })
                let input = try await other.unary(
                    "process.Process/SendInput",
                    "{\"process\":{\"pid\":\(pid)},\"input\":{\"stdin\":\"\(Data("hello\n".utf8).base64EncodedString())\"}}"
                )
                #expect(input.status == 200, "\(input.text)")
                try await waitUntil("the command has ended", within: .seconds(20)) {
                    let list = try await other.unary("process.Process/List", "{}")
                    return try !Process_ListResponse(jsonUTF8Data: list.body).processes.contains { $0.pid == pid }
                }
                // Exit 0 only if it read "hello": the stdin the second gateway sent.
                let ended = try await other.stream("process.Process/Connect", "{\"process\":{\"pid\":\(pid)}}")
                #expect(EnvdHarness.outcome(try EnvdHarness.events(ended)).end?.exitCode == 0, "\(ended.end)")
                // /health: 204 while the sandbox runs; once it is killed, E2B proxy's 502 "was not
                // found" (the SDK's is_running() is then False), from this gateway and the first.
                #expect(try await other.http("GET", "/health").status == 204)
                try await env.sandbox.kill()
                for gateway in [other, env] {
                    let health = try await gateway.http("GET", "/health")
                    #expect(health.status == 502 && health.text.contains("was not found"), "\(health.text)")
                }
            }
        }
    }
}
