import Hummingbird

extension Gateway {
    /// envd's Connect-RPC `filesystem.Filesystem` service.
    func addFilesystemRoutes(to router: Router<GatewayContext>) {}
}
