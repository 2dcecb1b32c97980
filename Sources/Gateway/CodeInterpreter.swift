import Hummingbird

extension Gateway {
    /// The code interpreter's API: `POST /execute` (streamed JSON lines) and `/contexts`.
    func addCodeInterpreterRoutes(to router: Router<GatewayContext>) {}
}
