import Hummingbird

extension Gateway {
    /// envd's Connect-RPC `process.Process` service.
    func addProcessRoutes(to router: Router<GatewayContext>) {}
}
