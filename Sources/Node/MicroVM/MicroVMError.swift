/// Why the microvm runtime cannot prepare or run a VM; `description` is for a person.
public struct MicroVMError: Error, Sendable, CustomStringConvertible {
    public var description: String

    /// An error that reads `description`.
    public init(_ description: String) {
        self.description = description
    }
}
