// How a directory template becomes an OCI bundle's root.
extension OCIJobConfig {
    /// Adds the template's top-level entries to the bundle: a mount point (an empty directory or
    /// file in the bundle's `rootfs`) and a read-only bind for each directory and file (read-write
    /// for a sandbox's writable layer, ``TemplateRootfs/writable``), the symlink
    /// itself for each symlink. The template's own folder is never the OCI root, so the runtime
    /// never creates mount points in it and the job's scratch files still go into the bundle.
    static func templateLayout(
        _ root: TemplateRootfs,
        rootfs: [OCIRootfsEntry],
        mounts: [OCIMount]
    ) -> ([OCIRootfsEntry], [OCIMount]) {
        var rootfs = rootfs
        var mounts = mounts
        for entry in root.entries {
            switch entry {
            case .directory(let source, let destination):
                rootfs.append(.directory(String(destination.dropFirst()), mode: 0o755))
                mounts.append(bind(source, at: destination, writable: root.writable))
            case .file(let source, let destination):
                rootfs.append(.file(String(destination.dropFirst())))
                mounts.append(bind(source, at: destination, writable: root.writable))
            case .symlink(let target, let destination):
                rootfs.append(.symlink(String(destination.dropFirst()), target: target))
            }
        }
        return (rootfs, mounts)
    }

    /// Like ``readOnlyBind(_:)``, from a template path.
    private static func bind(_ source: String, at destination: String, writable: Bool) -> OCIMount {
        OCIMount(
            destination: destination,
            type: "bind",
            source: source,
            options: ["bind", writable ? "rw" : "ro", "nosuid", "nodev"]
        )
    }
}

// How a job's path grants become bind mounts in an OCI bundle.
extension OCIJobConfig {
    /// Adds the grant mounts after the sandbox's own: a mount point in the bundle's `rootfs` for
    /// each one outside every existing mount (a granted path inside one, e.g. under `/usr`, already
    /// has its mount point there), then a bind (read-only or read-write) or, for a denied path
    /// inside a granted one, an empty read-only tmpfs (a directory) or `/dev/null` (a file).
    static func grantLayout(
        _ grants: GrantMounts,
        rootfs: [OCIRootfsEntry],
        mounts: [OCIMount]
    ) -> ([OCIRootfsEntry], [OCIMount]) {
        var rootfs = rootfs
        var mounts = mounts
        var made = Set(
            rootfs.compactMap { entry -> String? in
                switch entry {
                case .directory(let path, _), .file(let path), .symlink(let path, _), .content(let path, _): path
                }
            }
        )
        for grant in grants.mounts {
            let inMount = mounts.contains { grant.path == $0.destination || grant.path.hasPrefix($0.destination + "/") }
            if !inMount {
                var path = ""
                let components = grant.path.pathComponents()
                for (index, component) in components.enumerated() {
                    path += (path.isEmpty ? "" : "/") + component
                    guard !made.contains(path) else { continue }
                    made.insert(path)
                    let last = index == components.count - 1
                    rootfs.append(last && !grant.isDirectory ? .file(path) : .directory(path, mode: 0o755))
                }
            }
            switch grant.access {
            case .read:
                mounts.append(readOnlyBind(grant.path))
            case .readWrite:
                mounts.append(
                    OCIMount(
                        destination: grant.path,
                        type: "bind",
                        source: grant.path,
                        options: ["bind", "rw", "nosuid", "nodev"]
                    )
                )
            case .none:
                mounts.append(
                    grant.isDirectory
                        ? OCIMount(
                            destination: grant.path,
                            type: "tmpfs",
                            source: "tmpfs",
                            options: ["ro", "nosuid", "nodev", "noexec", "size=4k"]
                        )
                        : OCIMount(
                            destination: grant.path,
                            type: "bind",
                            source: "/dev/null",
                            options: ["bind", "ro", "nosuid", "nodev", "noexec"]
                        )
                )
            }
        }
        return (rootfs, mounts)
    }
}
