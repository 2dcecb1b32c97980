import HangarShared
import Testing

@Suite("TraceContext: W3C traceparent")
struct TraceContextTests {
    @Test("a valid traceparent round-trips; a child keeps the trace and changes the span")
    func parse() throws {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let trace = try #require(TraceContext(traceparent: header))
        #expect(trace.traceID == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(trace.spanID == "00f067aa0ba902b7")
        #expect(trace.sampled)
        #expect(trace.traceparent == header)
        let child = trace.child()
        #expect(child.traceID == trace.traceID)
        #expect(child.spanID != trace.spanID)
        #expect(TraceContext(traceparent: child.traceparent) == child)
        let fresh = TraceContext.start()
        #expect(TraceContext(traceparent: fresh.traceparent) == fresh)
    }

    @Test(
        "malformed or all-zero values are refused",
        arguments: [
            "", "garbage", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ]
    )
    func refuses(_ header: String) {
        #expect(TraceContext(traceparent: header) == nil)
    }
}
