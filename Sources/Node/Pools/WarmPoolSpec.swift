import HangarShared

/// One configured warm pool of a node: sandboxes of `template` in `runtime`, at least `min` and at
/// most `max` of them ready or being set up.
public struct WarmPoolSpec: Sendable, Hashable, CustomStringConvertible {
    public var runtime: String
    public var template: String
    public var min: Int
    public var max: Int

    /// A pool as given; see ``parse(_:)`` for the checks.
    public init(runtime: String, template: String, min: Int, max: Int) {
        self.runtime = runtime
        self.template = template
        self.min = min
        self.max = max
    }

    /// Parses `RUNTIME:TEMPLATE=MIN:MAX` (e.g. `process:host=2:8`), as `hangar node --pool` takes it.
    /// - Throws: ``WarmError`` saying what is wrong.
    public static func parse(_ text: String) throws(WarmError) -> WarmPoolSpec {
        let sides = text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let key = sides[0].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let counts =
            sides.count == 2 ? sides[1].split(separator: ":", omittingEmptySubsequences: false).map { Int($0) } : []
        guard key.count == 2, counts.count == 2, let min = counts[0], let max = counts[1] else {
            throw WarmError("--pool must be RUNTIME:TEMPLATE=MIN:MAX (e.g. process:host=2:8), got \"\(text)\"")
        }
        guard TemplateName.isValid(key[1]) else {
            throw WarmError("--pool \"\(text)\": template names are \(TemplateName.rule)")
        }
        guard min >= 0, max >= 1, min <= max, max <= 256 else {
            throw WarmError("--pool \"\(text)\": need 0 <= MIN <= MAX, 1 <= MAX <= 256")
        }
        return WarmPoolSpec(runtime: key[0], template: key[1], min: min, max: max)
    }

    public var description: String { "\(runtime):\(template)=\(min):\(max)" }
}
