import Foundation
import HangarNode
import HangarScheduler
import HangarShared
import Testing

/// An assignment names the node incarnation the scheduler placed it on; a node that has restarted
/// since refuses it, so a job placed on a view of the node older than its restart does not run
/// there while the scheduler also loses and retries it. A real node agent and nats-server.
@Suite("Assignments are fenced by the node's incarnation")
struct IncarnationFencingTests {
    @Test("the scheduler's assignments carry the incarnation; another incarnation's is refused, naming both")
    func fenced() async throws {
        try await withCluster(nodes: 1) { cluster in
            let incarnation = await cluster.scheduler.stats().nodes.first?.lastHeartbeat.incarnation ?? ""
            #expect(!incarnation.isEmpty)
            // Through the scheduler: placed with the current incarnation, it runs.
            let watched = try cluster.client.subscribe(Subjects.assign(node: "node-1"))
            try await cluster.client.flush()
            var request = Hangar_V1_SubmitRequest()
            request.runtime = "null"
            request.argv = ["/bin/true"]
            let result = try await cluster.run(request)
            #expect(result.status == .succeeded, "\(result)")
            var seen: Hangar_V1_Assignment?
            for await message in watched {
                seen =
                    message.header(AssignBatch.header) == AssignBatch.value
                    ? (try? Hangar_V1_AssignmentBatch(serializedBytes: message.payload))?.assignments.first
                    : try? Hangar_V1_Assignment(serializedBytes: message.payload)
                break
            }
            watched.unsubscribe()
            #expect(seen?.jobID == result.jobID)
            #expect(seen?.nodeIncarnation == incarnation, "\(String(describing: seen))")

            func assign(_ incarnation: String, job: String) async throws -> Hangar_V1_AssignReply {
                var assignment = Hangar_V1_Assignment()
                assignment.jobID = job
                assignment.tenant = "acme"
                assignment.attempt = 1
                assignment.spec.runtime = "null"
                assignment.spec.argv = ["/bin/true"]
                assignment.nodeIncarnation = incarnation
                let answer = try await cluster.client.request(
                    Subjects.assign(node: "node-1"),
                    payload: try assignment.serializedData(),
                    timeout: .seconds(10)
                )
                return try Hangar_V1_AssignReply(serializedBytes: answer.payload)
            }
            let stale = try await assign("an-earlier-life", job: "fenced1")
            guard case .refused(let refused) = stale.outcome else {
                Issue.record("a stale incarnation's assignment was admitted: \(stale)")
                return
            }
            #expect(refused.reason == .badAssignment)
            #expect(refused.message.contains("an-earlier-life") && refused.message.contains(incarnation), "\(refused)")
            let current = try await assign(incarnation, job: "fenced2")
            guard case .ack = current.outcome else {
                Issue.record("the current incarnation's assignment was refused: \(current)")
                return
            }
        }
    }
}
