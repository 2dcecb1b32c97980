import Foundation
import HangarScheduler
import Testing

@Suite("Hostile tenants files")
struct HostileYAMLTests {
    @Test(
        "hostile YAML is an error naming the problem, never a trap or a stall",
        arguments: [
            // 9^9 nodes once the aliases are expanded (Yams' own loader ran for minutes).
            (
                """
                a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
                b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
                c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
                d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
                e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
                f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
                g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
                h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
                i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
                """,
                "counting each alias expanded"
            ),
            // Yams trapped unwrapping a non-scalar key.
            ("[a]: 1", "a mapping key must be a plain name"),
            // Yams trapped on overflow in YAML 1.1 base-60 integers.
            ("defaults:\n  max_queued: 999999999999999999:0", "defaults.max_queued must be a whole number"),
            ("defaults:\n  max_queued: 99999999999999999999999", "out of range"),
            (String(repeating: "[", count: 100) + String(repeating: "]", count: 100), "nested deeper than 32"),
            // Very deep: refused by depth (ours or libyaml's limit), never a stack overflow.
            (String(repeating: "{a: ", count: 20_000) + "1" + String(repeating: "}", count: 20_000), "nest"),
            (String(repeating: "- ", count: 200) + "x", "nested deeper than 32"),
            ("defaults: {rate: 1}\n---\ndefaults: {rate: 2}", "one YAML document"),
            ("defaults: {rate: 1, rate: 2}", "duplicated key"),
            ("defaults: {weight: .inf}", "defaults.weight must be a finite number"),
            ("tenants:\n  acme: {rate: .nan}", "tenants.acme.rate must be a finite number"),
            ("a: *nowhere", "not valid YAML"),
        ]
    )
    func refused(yaml: String, expected: String) {
        do {
            _ = try TenantDirectory.parse(yaml: yaml)
            Issue.record("accepted: \(yaml.prefix(80))")
        } catch {
            #expect(error.description.contains(expected), "\(error.description.prefix(200))")
        }
    }

    @Test("plain scalars: digits are integers, quoted digits stay strings, aliases within bounds work")
    func scalars() throws {
        let directory = try TenantDirectory.parse(
            yaml: """
                defaults: &base {rate: 2.5, burst: 10, max_queued: 7}
                tenants:
                  acme: *base
                  quiet: ~
                """
        )
        #expect(directory.defaults.rate == 2.5)
        #expect(directory.defaults.maxQueued == 7)
        #expect(directory.policy(for: "acme").burst == 10)
        #expect(directory.tenants["quiet"] == directory.defaults)
        #expect(throws: TenantConfigError.self) { try TenantDirectory.parse(yaml: "defaults: {max_queued: '7'}") }
    }
}
