import Foundation
import HangarShared

/// `manifest.json` of a directory template: what it is, where it came from, and the digest of its
/// root filesystem as it was when the template was built.
public struct TemplateManifest: Codable, Sendable, Equatable {
    /// The template's name; also its folder's name in the store.
    public var name: String
    /// When the template was built, in Unix milliseconds.
    public var createdMs: Int64
    /// `sha256:<hex>` of the root filesystem, see ``TemplateDigest``.
    public var hash: String
    /// Bytes of regular files in the root filesystem.
    public var sizeBytes: UInt64
    /// Files, directories, links and other entries in the root filesystem.
    public var entries: UInt64
    /// Environment every job in the template starts with; the job's own variables win.
    public var env: [String: String]
    /// Where the root filesystem came from: `debian:bookworm (python3)`, `dir:/path`.
    public var source: String

    /// A manifest with every field given.
    public init(
        name: String,
        createdMs: Int64,
        hash: String,
        sizeBytes: UInt64,
        entries: UInt64,
        env: [String: String],
        source: String
    ) {
        self.name = name
        self.createdMs = createdMs
        self.hash = hash
        self.sizeBytes = sizeBytes
        self.entries = entries
        self.env = env
        self.source = source
    }
}

/// A template as the heartbeat reports it.
typealias TemplateInfo = Hangar_V1_TemplateInfo

extension Hangar_V1_TemplateInfo {
    /// The heartbeat entry for `manifest`.
    init(_ manifest: TemplateManifest) {
        self.init()
        name = manifest.name
        hash = manifest.hash
        sizeBytes = manifest.sizeBytes
        createdMs = manifest.createdMs
    }
}
