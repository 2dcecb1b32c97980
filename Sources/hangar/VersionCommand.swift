import ArgumentParser
import Foundation

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print hangar's version.")

    @OptionGroup var output: OutputOptions

    func run() throws {
        if output.isJSON {
            let data = try JSONSerialization.data(withJSONObject: ["version": hangarVersion], options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("hangar \(hangarVersion)")
        }
    }
}
