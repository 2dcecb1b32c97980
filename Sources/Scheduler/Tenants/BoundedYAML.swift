import CYaml
import Foundation
import Yams

/// Reads untrusted YAML into plain values (`[String: Any]`, `[Any]`, `String`, `Int`, `Double`,
/// `Bool`, `NSNull`) without letting the input crash or stall the reader:
///
/// 1. a pass over libyaml's events (iterative, no tree) enforces the size, the nesting depth and
///    the number of nodes once every alias is expanded, so a "billion laughs" file of a few hundred
///    bytes is refused before anything is built;
/// 2. `Yams.compose` builds the node tree (no construction of typed values: Yams' YAML 1.1 integer
///    constructors trap on overflow, and its mapping constructor on a non-scalar key);
/// 3. this walk converts the nodes with its own scalar rules: plain digits are an `Int` (an
///    out-of-range number is an error), plain decimals a `Double`, `true`/`false` a `Bool`,
///    `null`/`~`/empty `NSNull`; anything quoted, and anything else, stays a `String`; mapping keys
///    must be scalars.
enum BoundedYAML {
    struct Limits {
        var bytes = 1 << 20
        var depth = 32
        /// Nodes after alias expansion.
        var nodes = 100_000
    }

    /// The first document of `text` as plain values; nil for an empty document.
    static func load(_ text: String, limits: Limits = Limits()) throws(TenantConfigError) -> Any? {
        guard text.utf8.count <= limits.bytes else {
            throw TenantConfigError("the file is larger than \(limits.bytes) bytes")
        }
        try precheck(text, limits: limits)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw TenantConfigError("not valid YAML: \(error)")
        }
        guard let root else { return nil }
        var budget = limits.nodes
        return try plain(root, depth: 0, limits: limits, budget: &budget)
    }

    /// Walks libyaml's events: depth, documents and the expanded node count.
    private static func precheck(_ text: String, limits: Limits) throws(TenantConfigError) {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { throw TenantConfigError("cannot start the YAML parser") }
        defer { yaml_parser_delete(&parser) }
        let bytes = Array(text.utf8)
        // Expanded size of each anchored node, and the open collections: (anchor, nodes before it).
        var anchored: [String: Int] = [:]
        var open: [(anchor: String?, start: Int)] = []
        var nodes = 0
        var documents = 0
        try bytes.withUnsafeBufferPointer { (buffer) throws(TenantConfigError) in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else {
                    let problem = parser.problem.map { String(cString: $0) } ?? "a syntax error"
                    throw TenantConfigError(
                        "not valid YAML: \(problem) at line \(parser.problem_mark.line + 1), column \(parser.problem_mark.column + 1)"
                    )
                }
                defer { yaml_event_delete(&event) }
                func anchor(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
                    pointer.map { String(cString: $0) }
                }
                switch event.type {
                case YAML_STREAM_END_EVENT:
                    return
                case YAML_DOCUMENT_START_EVENT:
                    documents += 1
                    guard documents == 1 else { throw TenantConfigError("the file must hold one YAML document") }
                case YAML_SCALAR_EVENT:
                    nodes += 1
                    if let name = anchor(event.data.scalar.anchor) { anchored[name] = 1 }
                case YAML_ALIAS_EVENT:
                    guard let name = anchor(event.data.alias.anchor), let size = anchored[name] else {
                        throw TenantConfigError("not valid YAML: an alias to an unknown anchor")
                    }
                    nodes += size
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    nodes += 1
                    let name =
                        event.type == YAML_SEQUENCE_START_EVENT
                        ? anchor(event.data.sequence_start.anchor) : anchor(event.data.mapping_start.anchor)
                    open.append((name, nodes))
                    guard open.count <= limits.depth else {
                        throw TenantConfigError("the file is nested deeper than \(limits.depth) levels")
                    }
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    if let (name, start) = open.popLast(), let name { anchored[name] = nodes - start + 1 }
                default:
                    break
                }
                guard nodes <= limits.nodes else {
                    throw TenantConfigError(
                        "the file has more than \(limits.nodes) values (counting each alias expanded)"
                    )
                }
            }
        }
    }

    private static func plain(
        _ node: Node,
        depth: Int,
        limits: Limits,
        budget: inout Int
    ) throws(TenantConfigError) -> Any {
        budget -= 1
        guard budget >= 0, depth <= limits.depth else {
            throw TenantConfigError("the file is too large or too deeply nested")
        }
        switch node {
        case .scalar(let scalar):
            return try value(of: scalar)
        case .alias:
            throw TenantConfigError("not valid YAML: an unresolved alias")
        case .sequence(let sequence):
            var list: [Any] = []
            for element in sequence {
                list.append(try plain(element, depth: depth + 1, limits: limits, budget: &budget))
            }
            return list
        case .mapping(let mapping):
            var map: [String: Any] = [:]
            for (key, element) in mapping {
                guard case .scalar(let scalar) = key else {
                    throw TenantConfigError("a mapping key must be a plain name, not a list or mapping")
                }
                guard map[scalar.string] == nil else {
                    throw TenantConfigError("the key '\(scalar.string)' appears twice")
                }
                map[scalar.string] = try plain(element, depth: depth + 1, limits: limits, budget: &budget)
            }
            return map
        }
    }

    /// YAML 1.2 core-schema-like resolution of a plain scalar, without Yams' constructors.
    private static func value(of scalar: Node.Scalar) throws(TenantConfigError) -> Any {
        let text = scalar.string
        guard scalar.style == .plain || scalar.style == .any else { return text }
        switch text {
        case "", "~", "null", "Null", "NULL": return NSNull()
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default: break
        }
        let body =
            text.utf8.first == UInt8(ascii: "-") || text.utf8.first == UInt8(ascii: "+")
            ? text.utf8.dropFirst() : text.utf8[...]
        let isDigit = { (byte: UInt8) in byte >= 0x30 && byte <= 0x39 }
        if !body.isEmpty, body.allSatisfy(isDigit) {
            guard let integer = Int(text) else { throw TenantConfigError("the number \(text) is out of range") }
            return integer
        }
        let numeric = body.allSatisfy {
            isDigit($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E")
                || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "+")
        }
        if !body.isEmpty, numeric, body.contains(where: isDigit), let double = Double(text) {
            return double
        }
        return text
    }
}
