import Foundation

/// How a gateway serves: where it listens, how it names sandboxes' hosts, which Hangar template and
/// runtime E2B's template names mean, and the secret its sandbox tokens are made with.
public struct GatewayConfiguration: Sendable {
    /// The address to listen on (`127.0.0.1` by default).
    public var host: String
    /// The port to listen on; 0 picks a free one (the bound port is reported once the server runs).
    public var port: Int
    /// The domain of `PORT-SANDBOXID.DOMAIN` host names (wildcard DNS), and the `domain` a create
    /// reply names; nil when sandboxes are reached through the `E2b-Sandbox-Id` header only.
    public var domain: String?
    /// The key sandbox tokens (`envdAccessToken`, `trafficAccessToken`) are derived with: the same on
    /// every gateway of a cluster, so any of them accepts the tokens another gave.
    public var secret: Data
    /// E2B template name → Hangar template and runtime. Unknown names are refused with 400.
    public var templates: [String: TemplateMapping]
    /// The largest file `/files` accepts, in bytes.
    public var maxUploadBytes: Int

    /// A Hangar template and runtime that an E2B template name stands for.
    public struct TemplateMapping: Sendable, Equatable {
        /// The Hangar template (root filesystem).
        public var template: String
        /// The Hangar runtime.
        public var runtime: String

        /// A mapping to `template` on `runtime`.
        public init(template: String, runtime: String) {
            self.template = template
            self.runtime = runtime
        }
    }

    /// The defaults of the E2B SDKs' own template names: `base` (the `e2b` SDK) and
    /// `code-interpreter-v1` (`e2b-code-interpreter`) both mean Hangar's `host` template on `process`.
    public static let defaultTemplates: [String: TemplateMapping] = [
        "base": TemplateMapping(template: "host", runtime: "process"),
        "code-interpreter-v1": TemplateMapping(template: "host", runtime: "process"),
    ]

    /// A configuration with every field given or defaulted (uploads up to 100 MiB).
    public init(
        host: String = "127.0.0.1",
        port: Int = 0,
        domain: String? = nil,
        secret: Data,
        templates: [String: TemplateMapping] = GatewayConfiguration.defaultTemplates,
        maxUploadBytes: Int = 100 << 20
    ) {
        self.host = host
        self.port = port
        self.domain = domain
        self.secret = secret
        self.templates = templates
        self.maxUploadBytes = maxUploadBytes
    }
}
