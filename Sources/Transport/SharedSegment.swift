#if canImport(Glibc)
import Glibc
#endif
import CShims

/// A named /dev/shm mapping that ranks of one host share (the lanes between pairs, the arena of a whole
/// host). The creator passes the name to the others, which open it; both sides unlink it once mapped.
public enum SharedSegment {
    /// Why a segment could not be set up (the ranks then keep to their sockets).
    public struct Unavailable: Error, CustomStringConvertible {
        public let description: String
    }

    /// Creates a segment of `bytes` under a fresh random name. Pages are reserved up front: a full
    /// /dev/shm then fails here, with a reason, instead of killing the process with SIGBUS at the first
    /// write. `populate` maps every page at once (a lane's rings are all used at once; an arena's
    /// slots only as far as messages reach, and resident pages count in every rank's memory).
    public static func create(bytes: Int, populate: Bool = true) throws -> (base: UnsafeMutableRawPointer, name: String) {
        let name = "/swift-ddp-" + randomBytes(12).map { String($0, radix: 16) }.joined()
        let fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Unavailable(description: "shm_open \(name): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let reserved = posix_fallocate(fd, 0, off_t(bytes))
        guard reserved == 0 else {
            shm_unlink(name)
            throw Unavailable(description: "reserving \(bytes >> 10) KiB in /dev/shm: \(String(cString: strerror(reserved)))")
        }
        guard let base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0), base != MAP_FAILED else {
            shm_unlink(name)
            throw Unavailable(description: "mmap of \(bytes >> 10) KiB: \(String(cString: strerror(errno)))")
        }
        return (base, name)
    }

    /// Copies `bytes` into a segment with cached or non-temporal stores. ddp_copy_streaming ends with
    /// sfence: a counter published after it covers bytes already in memory.
    static func copy(_ destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer, bytes: Int, streaming: Bool) {
        if streaming { ddp_copy_streaming(destination, source, bytes) } else { destination.copyMemory(from: source, byteCount: bytes) }
    }

    /// Maps the segment another rank created, after checking its name's shape and its size.
    public static func open(name: String, bytes: Int, populate: Bool = true) throws -> UnsafeMutableRawPointer {
        guard name.hasPrefix("/swift-ddp-"), name.utf8.count < 64, !name.dropFirst().contains("/") else {
            throw Unavailable(description: "malformed segment name")
        }
        let fd = shm_open(name, O_RDWR | O_CLOEXEC, 0)
        guard fd >= 0 else { throw Unavailable(description: "shm_open \(name): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0, Int(status.st_size) == bytes else {
            throw Unavailable(description: "segment \(name) is not \(bytes) bytes")
        }
        guard let base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0), base != MAP_FAILED else {
            throw Unavailable(description: "mmap of \(bytes >> 10) KiB: \(String(cString: strerror(errno)))")
        }
        return base
    }
}
