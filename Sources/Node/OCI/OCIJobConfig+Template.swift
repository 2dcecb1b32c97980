// How a directory template becomes an OCI bundle's root.
extension OCIJobConfig {
    /// Adds the template's top-level entries to the bundle: a mount point (an empty directory or
    /// file in the bundle's `rootfs`) and a read-only bind for each directory and file, the symlink
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
                mounts.append(bind(source, at: destination))
            case .file(let source, let destination):
                rootfs.append(.file(String(destination.dropFirst())))
                mounts.append(bind(source, at: destination))
            case .symlink(let target, let destination):
                rootfs.append(.symlink(String(destination.dropFirst()), target: target))
            }
        }
        return (rootfs, mounts)
    }

    /// Like ``readOnlyBind(_:)``, from a template path.
    private static func bind(_ source: String, at destination: String) -> OCIMount {
        OCIMount(destination: destination, type: "bind", source: source, options: ["bind", "ro", "nosuid", "nodev"])
    }
}
