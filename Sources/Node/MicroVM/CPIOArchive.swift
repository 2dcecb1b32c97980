import Foundation

/// A cpio archive in the "newc" format the Linux kernel unpacks as an initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst). Entries are written in the order
/// they are added, with uid/gid 0 and mtime 0, so the same content gives the same bytes.
struct CPIOArchive {
    private(set) var data = Data()
    private var nextInode: UInt32 = 1

    /// A directory (mode bits only, e.g. 0o755).
    mutating func addDirectory(_ path: String, mode: UInt32 = 0o755) {
        add(path, mode: 0o040000 | mode, content: Data())
    }

    /// A regular file.
    mutating func addFile(_ path: String, mode: UInt32, content: Data) {
        add(path, mode: 0o100000 | (mode & 0o7777), content: content)
    }

    /// A symbolic link whose target is `target`.
    mutating func addSymlink(_ path: String, target: String) {
        add(path, mode: 0o120777, content: Data(target.utf8))
    }

    /// The archive with its trailer.
    func finished() -> Data {
        var copy = self
        copy.add("TRAILER!!!", mode: 0, content: Data(), inode: 0)
        return copy.data
    }

    private mutating func add(_ path: String, mode: UInt32, content: Data, inode: UInt32? = nil) {
        let name = path.hasPrefix("/") ? String(path.dropFirst()) : path
        let fields: [UInt32] = [
            inode ?? nextInode, mode, 0, 0, mode & 0o040000 != 0 ? 2 : 1, 0, UInt32(content.count), 0, 0, 0, 0,
            UInt32(name.utf8.count + 1), 0,
        ]
        if inode == nil { nextInode += 1 }
        var header = "070701"
        for field in fields {
            let hex = String(field, radix: 16, uppercase: true)
            header += String(repeating: "0", count: 8 - hex.count) + hex
        }
        data.append(contentsOf: header.utf8)
        data.append(contentsOf: name.utf8)
        data.append(0)
        pad()
        data.append(content)
        pad()
    }

    private mutating func pad() {
        let remainder = data.count % 4
        if remainder != 0 { data.append(contentsOf: [UInt8](repeating: 0, count: 4 - remainder)) }
    }
}
