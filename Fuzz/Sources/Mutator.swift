import Foundation
import SwiftProtobuf

// A structure-aware mutator for the protobuf targets. libFuzzer's byte mutations rarely keep a
// protobuf's length prefixes consistent, so they seldom change a string inside a message without
// breaking it. Half of the time this mutator instead decodes the input, prints it in protobuf text
// format, lets libFuzzer mutate that text (its dictionary entries land inside quoted strings),
// parses it back and re-encodes it; the other half, and whenever that fails, it mutates the raw
// bytes as usual, which keeps the decoder itself under attack.

@_extern(c, "LLVMFuzzerMutate")
func fuzzerMutate(_ data: UnsafeMutablePointer<UInt8>?, _ size: Int, _ maxSize: Int) -> Int

/// A message type's text format round trip, type-erased.
struct TextForm: Sendable {
    var toText: @Sendable (Data) -> String?
    var fromText: @Sendable (String) -> Data?

    init<M: Message>(_ type: M.Type) {
        let printing: TextFormatEncodingOptions = {
            var options = TextFormatEncodingOptions()
            options.printUnknownFields = false
            return options
        }()
        toText = { bytes in (try? M(serializedBytes: bytes))?.textFormatString(options: printing) }
        fromText = { text in
            guard let message = try? M(textFormatString: text) else { return nil }
            return try? message.serializedBytes()
        }
    }
}

@_cdecl("LLVMFuzzerCustomMutator")
public func fuzzerCustomMutator(
    _ data: UnsafeMutablePointer<UInt8>?,
    _ size: Int,
    _ maxSize: Int,
    _ seed: CUnsignedInt
) -> Int {
    guard let data, seed & 1 == 0, let form = selected?.textForm,
        let text = form.toText(Data(bytes: data, count: size))
    else {
        return fuzzerMutate(data, size, maxSize)
    }
    var buffer = Array(text.utf8)
    let length = buffer.count
    let capacity = length + 512
    buffer.append(contentsOf: repeatElement(0, count: capacity - length))
    let mutatedLength = buffer.withUnsafeMutableBufferPointer { fuzzerMutate($0.baseAddress, length, capacity) }
    guard let encoded = form.fromText(String(decoding: buffer[..<mutatedLength], as: UTF8.self)),
        encoded.count <= maxSize
    else {
        return fuzzerMutate(data, size, maxSize)
    }
    encoded.copyBytes(to: data, count: encoded.count)
    return encoded.count
}
