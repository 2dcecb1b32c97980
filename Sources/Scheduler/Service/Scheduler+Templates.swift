import HangarShared

extension Scheduler {
    /// Why a job no up node could ever run is rejected: `unsupported` on `template` when no up
    /// node holds its template (nodes report theirs in every heartbeat), `no_capacity` otherwise.
    func impossibleRejection(_ request: PlacementRequest, _ why: String) -> Rejection {
        let held = core.cluster.views.contains { $0.up && $0.templates.contains(request.template) }
        guard held else {
            return Rejection(
                .unsupported,
                "template",
                "template '\(request.template)' is not held by any node that is up (build it with `hangar template build` on a node); \(why)"
            )
        }
        return Rejection(.noCapacity, "runtime", why)
    }
}
