import Hummingbird

extension Gateway {
    /// envd's `/files` upload and download.
    func addFileTransferRoutes(to router: Router<GatewayContext>) {}
}
