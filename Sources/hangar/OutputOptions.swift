import ArgumentParser
@preconcurrency import SwiftProtobuf

/// `-o table|wide|json` and `--json`, on every command that prints data.
struct OutputOptions: ParsableArguments {
    enum Format: String, ExpressibleByArgument, CaseIterable {
        case table, wide, json
    }

    @Option(name: .shortAndLong, help: "Output format: table, wide (more columns) or json.")
    var output: Format = .table

    @Flag(help: "Print JSON (the same as -o json).")
    var json = false

    var format: Format { json ? .json : output }
    var isJSON: Bool { format == .json }
    var isWide: Bool { format == .wide }
}

/// Prints a protobuf message as protobuf JSON on stdout (lowerCamelCase names; fields at their zero
/// value are left out; 64-bit integers are strings; bytes are base64).
func printJSON(_ message: some SwiftProtobuf.Message) throws {
    var options = JSONEncodingOptions()
    options.useDeterministicOrdering = true
    print(try message.jsonString(options: options))
}
