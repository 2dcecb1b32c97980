import Foundation
import HangarTestSupport
import Testing

/// The real `hangar` binary against a live `hangar dev` cluster (real nats-server on loopback).
@Suite("hangar CLI", .serialized)
struct CLITests {
    @Test("-o json of node status, job status and tenant list parses and holds the fields")
    func jsonOutput() async throws {
        try await withCLICluster { cluster in
            let nodes = try await cluster.hangar(["node", "status", "-o", "json"])
            #expect(nodes.status == 0, "\(nodes.stderr)")
            let list = try #require(try nodes.json()["nodes"] as? [[String: Any]])
            let ids = list.compactMap { ($0["lastHeartbeat"] as? [String: Any])?["nodeId"] as? String }
            #expect(ids.sorted() == ["dev-node-1", "dev-node-2"])
            #expect(list.allSatisfy { $0["state"] as? String == "NODE_STATE_UP" && $0["eligible"] as? Bool == true })

            // One node by a unique prefix of its id; an ambiguous prefix is an error.
            let one = try await cluster.hangar(["node", "status", "dev-node-2", "--json"])
            #expect(one.status == 0, "\(one.stderr)")
            let heartbeat = try #require(try one.json()["lastHeartbeat"] as? [String: Any])
            #expect(heartbeat["nodeId"] as? String == "dev-node-2")
            // Where it runs: this machine's host name and the nats-server it is connected to.
            #expect(heartbeat["host"] as? String == ProcessInfo.processInfo.hostName, "\(heartbeat)")
            #expect((heartbeat["natsServer"] as? String)?.hasPrefix("nats://127.0.0.1:") == true, "\(heartbeat)")
            let table = try await cluster.hangar(["node", "status"])
            let row = try #require(table.stdout.split(separator: "\n").first { $0.hasPrefix("dev-node-2 ") })
            #expect(
                row.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first
                    == Substring(ProcessInfo.processInfo.hostName),
                "\(table.stdout)"
            )
            let ambiguous = try await cluster.hangar(["node", "status", "dev-node"])
            #expect(ambiguous.status == 1)
            #expect(ambiguous.stderr.contains("matches several nodes"))

            // The cluster as a whole: one nats-server, every Hangar stream with one copy, this scheduler.
            let clusterJSON = try await cluster.hangar(["cluster", "status", "-o", "json"])
            #expect(clusterJSON.status == 0, "\(clusterJSON.stderr)")
            let streams = try #require(try clusterJSON.json()["streams"] as? [[String: Any]])
            #expect(
                Set(streams.compactMap { $0["name"] as? String })
                    == ["HANGAR_SUBMISSIONS", "HANGAR_RESULTS", "HANGAR_SANDBOX_EVENTS"]
            )
            #expect(streams.allSatisfy { $0["replicas"] as? Int == 1 && $0["error"] == nil }, "\(streams)")
            let schedulers = try #require(try clusterJSON.json()["schedulers"] as? [[String: Any]])
            #expect(schedulers.count == 1 && schedulers[0]["role"] as? String == "single")
            let clusterTable = try await cluster.hangar(["cluster", "status"])
            #expect(clusterTable.status == 0, "\(clusterTable.stderr)")
            #expect(clusterTable.stdout.contains("HANGAR_SUBMISSIONS") && clusterTable.stdout.contains("SCHEDULER"))

            let submitted = try await cluster.hangar(["submit", "--tenant", "acme", "--", "/bin/echo", "hello"])
            #expect(submitted.status == 0, "\(submitted.stderr)")
            let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(!id.isEmpty)
            let logs = try await cluster.hangar(["job", "logs", "-f", id])
            #expect(logs.status == 0, "\(logs.stderr)")
            #expect(logs.stdout == "hello\n")

            let job = try await cluster.hangar(["job", "status", id, "-o", "json"])
            #expect(job.status == 0, "\(job.stderr)")
            let jobJSON = try job.json()
            #expect(jobJSON["tenant"] as? String == "acme")
            let result = try #require(jobJSON["result"] as? [String: Any])
            #expect(result["jobId"] as? String == id)
            #expect(result["status"] as? String == "SUCCEEDED")
            #expect(result["nodeId"] as? String != nil)

            let jobs = try await cluster.hangar(["job", "status", "--json"])
            #expect(jobs.status == 0, "\(jobs.stderr)")
            let summaries = try #require(try jobs.json()["jobs"] as? [[String: Any]])
            #expect(summaries.contains { $0["jobId"] as? String == id && $0["status"] as? String == "SUCCEEDED" })

            let tenants = try await cluster.hangar(["tenant", "list", "-o", "json"])
            #expect(tenants.status == 0, "\(tenants.stderr)")
            let tenantList = try #require(try tenants.json()["tenants"] as? [[String: Any]])
            let acme = try #require(tenantList.first { $0["name"] as? String == "acme" })
            #expect(acme["accepted"] as? String == "1")  // uint64 is a string in protobuf JSON
            #expect(acme["finished"] as? String == "1")
            #expect(acme["weight"] as? Double == 1)
        }
    }

    @Test("exit codes: 0 success, 1 bad arguments or unknown job, 2 no capacity, the job's own for run")
    func exitCodes() async throws {
        try await withCLICluster { cluster in
            let ok = try await cluster.hangar(["run", "--", "/bin/echo", "fine"])
            #expect(ok.status == 0, "\(ok.stderr)")
            #expect(ok.stdout == "fine\n")

            // After --, --help and -h are the job's (before it they are hangar's: CLIConventionsTests).
            let helpArguments = try await cluster.hangar(["run", "--", "/bin/echo", "--help", "-h"])
            #expect(helpArguments.status == 0, "\(helpArguments.stderr)")
            #expect(helpArguments.stdout == "--help -h\n")

            let own = try await cluster.hangar(["run", "--", "/bin/sh", "-c", "echo out; exit 7"])
            #expect(own.status == 7, "\(own.stderr)")
            #expect(own.stdout == "out\n")

            let noCapacity = try await cluster.hangar(["run", "--runtime", "gvisor", "--", "/bin/true"])
            #expect(noCapacity.status == 2)
            #expect(noCapacity.stderr.contains("no_capacity"))
            let noCapacitySubmit = try await cluster.hangar(["submit", "--runtime", "gvisor", "--", "/bin/true"])
            #expect(noCapacitySubmit.status == 2)

            let unknownJob = try await cluster.hangar(["job", "status", "j-no-such-job"])
            #expect(unknownJob.status == 1)
            #expect(unknownJob.stderr.contains("no job with id"))

            let badArguments = try await cluster.hangar(["run"])
            #expect(badArguments.status == 1)
            #expect(badArguments.stderr.contains("give the command to run"))
            let unknownOption = try await cluster.hangar(["node", "status", "--no-such-option"])
            #expect(unknownOption.status == 1)

            let rejected = try await cluster.hangar(["run", "--tenant", "not a tenant!", "--", "/bin/true"])
            #expect(rejected.status == 1)
        }
    }

    @Test(
        "run --file-out saves the job's files with --out-dir; a bad --network is a usage error; grants and limits are sent"
    )
    func filesOut() async throws {
        try await withCLICluster { cluster in
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-cli-out-\(UUID())")
            defer { try? FileManager.default.removeItem(at: out) }
            let run = try await cluster.hangar([
                "run", "--file-out", "res/*.txt", "--out-dir", out.path, "--",
                "/bin/sh", "-c", "mkdir res && echo 42 > res/answer.txt && echo done",
            ])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.stdout == "done\n")
            let saved = try String(contentsOf: out.appendingPathComponent("res/answer.txt"), encoding: .utf8)
            #expect(saved == "42\n")

            let unsaved = try await cluster.hangar([
                "run", "--file-out", "*.txt", "--", "/bin/sh", "-c", "echo x > a.txt",
            ])
            #expect(unsaved.status == 0, "\(unsaved.stderr)")
            #expect(unsaved.stderr.contains("returned 1 file(s); give --out-dir"), "\(unsaved.stderr)")

            let badNetwork = try await cluster.hangar(["run", "--network", "internet", "--", "/bin/true"])
            #expect(badNetwork.status == 1)
            #expect(badNetwork.stderr.contains("--network must be"), "\(badNetwork.stderr)")

            // Grants travel with the request: by default a tenant may be granted no host path.
            let granted = try await cluster.hangar(["run", "--allow-read", "/srv,/opt/data", "--", "/bin/true"])
            #expect(granted.status == 1)
            #expect(granted.stderr.contains("grants.allow_read[0]"), "\(granted.stderr)")
            #expect(granted.stderr.contains("'/srv'"), "\(granted.stderr)")

            // Limits travel too: within the scheduler's maxima a job runs, above them it is refused
            // naming the limit (8 GiB of memory, 16 cores by default).
            let limited = try await cluster.hangar([
                "run", "--memory-mib", "64", "--cpu-millis", "500", "--", "/bin/true",
            ])
            #expect(limited.status == 0, "\(limited.stderr)")
            let tooMuchMemory = try await cluster.hangar(["run", "--memory-mib", "9000", "--", "/bin/true"])
            #expect(tooMuchMemory.status == 1)
            #expect(tooMuchMemory.stderr.contains("memory_bytes"), "\(tooMuchMemory.stderr)")
            let tooMuchCPU = try await cluster.hangar(["submit", "--cpu-millis", "20000", "--", "/bin/true"])
            #expect(tooMuchCPU.status == 1)
            #expect(tooMuchCPU.stderr.contains("cpu_millis"), "\(tooMuchCPU.stderr)")
            let zero = try await cluster.hangar(["run", "--memory-mib", "0", "--", "/bin/true"])
            #expect(zero.status == 1 && zero.stderr.contains("--memory-mib must be"), "\(zero.stderr)")
        }
    }

    @Test("job logs -f follows a running job and prints its whole output exactly once")
    func followLogs() async throws {
        try await withCLICluster { cluster in
            let submitted = try await cluster.hangar([
                "submit", "--", "/bin/sh", "-c", "echo one; sleep 2; echo two >&2; sleep 1; echo three",
            ])
            #expect(submitted.status == 0, "\(submitted.stderr)")
            let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            // Follow once the scheduler reports the job RUNNING (the job then runs 3 s more).
            let deadline = ContinuousClock.now + .seconds(30)
            var state = ""
            while state != "RUNNING" && ContinuousClock.now < deadline {
                let status = try await cluster.hangar(["job", "status", id, "-o", "json"])
                state = (try? status.json())?["status"] as? String ?? status.stdout + status.stderr
                if state != "RUNNING" { try await Task.sleep(for: .milliseconds(50)) }
            }
            try #require(state == "RUNNING", "job \(id) was not RUNNING within 30 s: \(state)")
            let logs = try await cluster.hangar(["job", "logs", "-f", id])
            #expect(logs.status == 0, "\(logs.stderr)")
            #expect(logs.stdout == "one\nthree\n", "\(logs.stdout)")
            #expect(logs.stderr.components(separatedBy: "two\n").count == 2, "\(logs.stderr)")
        }
    }

    @Test("hangar top --once shows every node with its pools column, the tenants and cluster numbers")
    func topOnce() async throws {
        try await withCLICluster(nodes: 3) { cluster in
            let run = try await cluster.hangar(["run", "--tenant", "acme", "--runtime", "null", "--", "x"])
            #expect(run.status == 0, "\(run.stderr)")
            let top = try await cluster.hangar(["top", "--once"])
            #expect(top.status == 0, "\(top.stderr)")
            let lines = top.stdout.split(separator: "\n").map(String.init)
            #expect(lines.contains { $0.hasPrefix("CLUSTER") && $0.contains("jobs/s") && $0.contains("p99") })
            // The NATS side: each stream with its copies, and this scheduler (no election in dev).
            #expect(
                lines.contains {
                    $0.hasPrefix("NATS") && $0.contains("submissions R1") && $0.contains("results R1")
                        && $0.contains("scheduler single")
                },
                "\(top.stdout)"
            )
            let header = try #require(lines.first { $0.hasPrefix("NODE") })
            #expect(header.contains("POOLS") && header.contains("HOST"))
            for node in 1...3 {
                let row = try #require(
                    lines.first { $0.hasPrefix("dev-node-\(node) ") },
                    "node \(node) missing:\n\(top.stdout)"
                )
                #expect(row.contains("ready") && row.contains(" \(ProcessInfo.processInfo.hostName) "), "\(row)")
                // Each template the node offers has a pool cell (`host -` until heartbeats carry
                // counts), then the node's stateful sandboxes (none).
                #expect(row.contains("host -") && row.hasSuffix(" 0"), "\(row)")
            }
            let acme = try #require(lines.first { $0.hasPrefix("acme ") }, "\(top.stdout)")
            #expect(acme.split(separator: " ", omittingEmptySubsequences: true).last == "1")  // finished
            #expect(!top.stdout.contains("\u{1B}["), "no escape codes when stdout is not a terminal")

            let json = try await cluster.hangar(["top", "--once", "-o", "json"])
            let stats = try json.json()
            #expect((stats["nodes"] as? [Any])?.count == 3)
            #expect(stats["jobsFinished"] as? String == "1")
        }
    }

    @Test("connection settings: flag > HANGAR_URL > context file (url, creds, tenant)")
    func connectionPrecedence() async throws {
        try await withCLICluster(nodes: 1) { cluster in
            let url = try String(contentsOf: cluster.state.appendingPathComponent("url"), encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let added = try await cluster.hangar(["tenant", "add", "ctx", "--auth-dir", cluster.authDirectory])
            #expect(added.status == 0, "\(added.stderr)")
            let creds = cluster.authDirectory + "/creds"
            let folder = try makeTemporaryDirectory("hangar-cli-context")
            defer { try? FileManager.default.removeItem(at: folder) }
            let context = folder.appendingPathComponent("context.yaml")
            try "url: \(url)\ntenant: ctx\ncreds: \(creds)/tenant-ctx.json\n".write(
                to: context,
                atomically: true,
                encoding: .utf8
            )
            let elsewhere = folder.appendingPathComponent("no-dev-here").path  // no `hangar dev` state here
            let operatorCreds = "\(creds)/operator-admin.json"

            let viaContext = try await runHangar(
                ["submit", "--state", elsewhere, "--context", context.path, "--", "/bin/true"]
            )
            #expect(viaContext.status == 0, "\(viaContext.stderr)")
            let id = viaContext.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let job = try await runHangar(
                ["job", "status", id, "--json", "--state", elsewhere, "--nats", url, "--creds", operatorCreds]
            )
            #expect(try job.json()["tenant"] as? String == "ctx", "the context's tenant is used: \(job.stdout)")

            let dead = "nats://127.0.0.1:1"
            let envBeatsContext = try await runHangar(
                ["node", "status", "--state", elsewhere],
                environment: ["HANGAR_CONTEXT": context.path, "HANGAR_URL": dead]
            )
            #expect(envBeatsContext.status == 1)
            #expect(envBeatsContext.stderr.contains(dead))
            let flagBeatsEnv = try await runHangar(
                ["node", "status", "--state", elsewhere, "--nats", url, "--creds", operatorCreds],
                environment: ["HANGAR_URL": dead]
            )
            #expect(flagBeatsEnv.status == 0, "\(flagBeatsEnv.stderr)")

            try "url: \(url)\ncolour: red\n".write(to: context, atomically: true, encoding: .utf8)
            let badContext = try await runHangar(["node", "status", "--state", elsewhere, "--context", context.path])
            #expect(badContext.status == 1)
            #expect(badContext.stderr.contains("colour"))
        }
    }
}
