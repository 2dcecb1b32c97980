extension Dictionary {
    /// Runs `body` on the value at `index` where it is stored, and returns what it returns.
    ///
    /// Reading a field as `values[index].field` copies the whole value first (the getter of
    /// `Dictionary.Values` is not inlined in optimized builds; for the scheduler's job entries a
    /// copy is a dozen reference counts), and `self[key]?.field` hashes the key again. This reads
    /// and writes in place after the one lookup that found `index`. `body` must not touch the
    /// dictionary itself.
    @inlinable
    mutating func inPlace<Result>(at index: Index, _ body: (inout Value) throws -> Result) rethrows -> Result {
        try body(&values[index])
    }
}
