import HangarNode
import HangarShared
import Testing

@Suite("Per-runtime limit defaults and maxima on the node")
struct RuntimeLimitsTests {
    @Test("zero limits take the runtime's defaults; a limit above its maximum is refused by name")
    func resolve() throws {
        var table: [String: RuntimeLimits] = [:]
        try RuntimeLimits.apply("process.memory_bytes=1048576", maximum: true, to: &table)
        try RuntimeLimits.apply("process.timeout_ms=500", maximum: false, to: &table)
        let limits = try #require(table["process"])
        var asked = Hangar_V1_Limits()
        asked.memoryBytes = 1 << 20
        let resolved = try limits.resolve(asked).get()
        #expect(resolved.timeoutMs == 500)
        #expect(resolved.memoryBytes == 1 << 20)
        #expect(resolved.pids == RuntimeLimits.standard().defaults.pids)
        asked.memoryBytes = (1 << 20) + 1
        guard case .failure(let above) = limits.resolve(asked) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(above.field == "memory_bytes")
        #expect(above.description.contains("at most 1048576"))
    }

    @Test(
        "bad settings name what is wrong",
        arguments: ["process.memory=1", "memory_bytes=1", "process.pids=x", "process.pids=99999999999"]
    )
    func badSetting(_ setting: String) {
        var table: [String: RuntimeLimits] = [:]
        #expect(throws: RuntimeLimitsError.self) { try RuntimeLimits.apply(setting, maximum: true, to: &table) }
        #expect(table.isEmpty)
    }
}
