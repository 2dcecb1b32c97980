import Hummingbird

extension Gateway {
    /// The control-plane REST API: `/sandboxes`, `/v2/sandboxes`, `/sandboxes/{id}`, timeout, connect.
    func addControlPlaneRoutes(to router: Router<GatewayContext>) {}
}
