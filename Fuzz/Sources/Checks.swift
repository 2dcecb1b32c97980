import Foundation
import SwiftProtobuf

/// The target being run, for failure messages.
nonisolated(unsafe) var currentTarget = "?"

/// Stops the run with a message libFuzzer reports as a crash (the input is saved as a crash-* file).
func fail(_ message: String, file: StaticString = #fileID, line: UInt = #line) -> Never {
    FileHandle.standardError.write(Data("\n[hangar-fuzz:\(currentTarget)] INVARIANT FAILED: \(message)\n".utf8))
    fatalError("[\(currentTarget)] \(message)", file: file, line: line)
}

/// Fails the run unless `condition` holds.
func require(
    _ condition: @autoclosure () -> Bool,
    _ message: @autoclosure () -> String,
    file: StaticString = #fileID,
    line: UInt = #line
) {
    if !condition() { fail(message(), file: file, line: line) }
}

/// A short, printable rendering of a value for failure messages.
func show(_ value: some Any, limit: Int = 300) -> String {
    let text = String(reflecting: value)
    return text.count > limit ? String(text.prefix(limit)) + "..." : text
}

private let deterministicBinary: BinaryEncodingOptions = {
    var options = BinaryEncodingOptions()
    options.useDeterministicOrdering = true
    return options
}()

private let dropUnknown: BinaryDecodingOptions = {
    var options = BinaryDecodingOptions()
    options.discardUnknownFields = true
    return options
}()

private let deterministicJSON: JSONEncodingOptions = {
    var options = JSONEncodingOptions()
    options.useDeterministicOrdering = true
    return options
}()

private let protoNamesJSON: JSONEncodingOptions = {
    var options = JSONEncodingOptions()
    options.useDeterministicOrdering = true
    options.preserveProtoFieldNames = true
    options.alwaysPrintEnumsAsInts = true
    return options
}()

private let textWithoutUnknown: TextFormatEncodingOptions = {
    var options = TextFormatEncodingOptions()
    options.printUnknownFields = false
    return options
}()

/// Decodes `bytes` the way Hangar does (`M(serializedBytes: payload)` with default options); on
/// success checks every encoding of the decoded message (see `checkEncodings`) and returns it.
@discardableResult
func decodeAndCheck<M: Message & Equatable>(_ type: M.Type, _ bytes: Data) -> M? {
    guard let message = try? M(serializedBytes: bytes) else { return nil }
    checkEncodings(message, original: bytes)
    return message
}

/// What must hold for any message that decoded:
/// - binary: it re-encodes, the encoding decodes to an equal message, and the deterministic
///   encodings of both are byte-identical;
/// - JSON (both field-name styles) and text format: it encodes, the encoding decodes back to the
///   message without its unknown fields (which these formats leave out), and encodes again to the
///   same text.
func checkEncodings<M: Message & Equatable>(_ message: M, original: Data? = nil) {
    let name = String(describing: M.self)
    let encoded: Data
    do {
        encoded = try message.serializedBytes()
    } catch {
        fail("\(name): a decoded message does not re-encode: \(error)")
    }
    if let original {
        // Re-encoding only adds what an input may leave out (a map entry's key or value tags), well
        // under twice the input; more would mean the decoder invented data.
        require(
            encoded.count <= original.count * 2 + 64,
            "\(name): \(original.count) input bytes re-encode to \(encoded.count)"
        )
    }
    let again: M
    do {
        again = try M(serializedBytes: encoded)
    } catch {
        fail("\(name): its own encoding (\(encoded.count) bytes) does not decode: \(error)")
    }
    require(again == message, "\(name): binary round trip changed the message: \(show(message)) vs \(show(again))")
    do {
        let first: Data = try message.serializedBytes(options: deterministicBinary)
        let second: Data = try again.serializedBytes(options: deterministicBinary)
        require(first == second, "\(name): deterministic encodings differ after a round trip")
    } catch {
        fail("\(name): deterministic encoding failed: \(error)")
    }

    // What JSON and text format can carry: the message without unknown fields.
    let known: M
    do {
        known = try M(serializedBytes: encoded, options: dropUnknown)
    } catch {
        fail("\(name): does not decode with discardUnknownFields: \(error)")
    }

    for options in [deterministicJSON, protoNamesJSON] {
        let json: String
        do {
            json = try message.jsonString(options: options)
        } catch {
            fail("\(name): JSON encoding failed: \(error)")
        }
        let fromJSON: M
        do {
            fromJSON = try M(jsonString: json)
        } catch {
            fail("\(name): its JSON does not decode: \(error); JSON: \(json.prefix(300))")
        }
        require(fromJSON == known, "\(name): JSON round trip changed the message; JSON: \(json.prefix(300))")
        let jsonAgain = try? fromJSON.jsonString(options: options)
        require(jsonAgain == json, "\(name): JSON is not stable across a round trip")
        // The same through the UTF-8 entry points.
        do {
            let utf8: Data = try message.jsonUTF8Bytes(options: options)
            require(utf8 == Data(json.utf8), "\(name): jsonUTF8Bytes differs from jsonString")
            let fromUTF8 = try M(jsonUTF8Bytes: utf8)
            require(fromUTF8 == known, "\(name): JSON UTF-8 round trip changed the message")
        } catch {
            fail("\(name): JSON UTF-8 round trip failed: \(error)")
        }
    }

    // Text format, as logged through `description`.
    _ = message.textFormatString()
    let text = message.textFormatString(options: textWithoutUnknown)
    do {
        let fromText = try M(textFormatString: text)
        require(fromText == known, "\(name): text format round trip changed the message; text: \(text.prefix(300))")
    } catch {
        fail("\(name): its text format does not decode: \(error); text: \(text.prefix(300))")
    }
}

/// A string made of the bytes, as `String(decoding:as:)` would (invalid UTF-8 repaired).
func lossyString(_ bytes: some Collection<UInt8>) -> String {
    String(decoding: bytes, as: UTF8.self)
}
