import CZlib
import FoundationEssentials
import Glibc
import Support
import Tensors

/// A checkpoint file that cannot be trusted or used, with the path and the reason.
public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let problem: String
    public init(_ path: String, _ problem: String) { self.path = path; self.problem = problem }
    public var description: String { "checkpoint \(path): \(problem)" }
}

/// Checkpoints in the safetensors layout: an 8-byte little-endian header length, a JSON header mapping
/// each tensor name to {dtype F32, shape, data_offsets} plus a "__metadata__" map of strings, then the raw
/// little-endian float32 data. The metadata's "checksum" is a CRC-32 over the whole header (every
/// tensor entry and every other metadata value, in a canonical order) and the data, so a flipped bit
/// anywhere is refused; "crc32" (data only) is kept for older readers. Every size computed from a file
/// uses checked arithmetic and is bounded by the file's real size before a byte is used; tensors must
/// tile the data section exactly (no gaps, no overlaps). Files are written atomically: a fresh temp file
/// (created exclusively, never through a symlink), fsync, rename, fsync of the directory, so a crash
/// leaves the old checkpoint or the new one, never a mix, and a planted link is never written through.
public struct Checkpoint {
    public var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)]
    public var metadata: [String: String]

    /// Upper bound on the JSON header, so a corrupt length cannot make us allocate gigabytes.
    static let maxHeaderBytes = 16 << 20

    public init(tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = [], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    public func write(to path: String) throws {
        var offset = 0
        var header: [String: JSONValue] = [:]
        for t in tensors {
            precondition(t.shape.reduce(1, *) == t.values.count, "checkpoint tensor \(t.name) shape/count mismatch")
            header[t.name] = ["dtype": "F32", "shape": JSONValue(t.shape), "data_offsets": [JSONValue(offset), JSONValue(offset + 4 * t.values.count)]]
            offset += 4 * t.values.count
        }
        var crc = crc32(0, nil, 0)
        for t in tensors where t.values.count > 0 {
            crc = crc32(crc, UnsafeRawPointer(t.values.baseAddress!).assumingMemoryBound(to: UInt8.self), UInt32(4 * t.values.count))
        }
        var meta = metadata
        meta["crc32"] = String(crc, radix: 16)
        var whole = checkpointHeaderChecksum(entries: tensors.reduce(into: [(String, [Int], Int, Int)]()) { list, t in
            let start = list.last.map { $0.3 } ?? 0
            list.append((t.name, t.shape, start, start + 4 * t.values.count))
        }, metadata: meta)
        for t in tensors where t.values.count > 0 {
            whole = crc32(whole, UnsafeRawPointer(t.values.baseAddress!).assumingMemoryBound(to: UInt8.self), UInt32(4 * t.values.count))
        }
        meta["checksum"] = String(whole, radix: 16)
        header["__metadata__"] = .object(meta.mapValues { .string($0) })
        var json = Array(JSONValue.object(header).serialized().utf8)
        while json.count % 8 != 0 { json.append(0x20) } // pad with spaces: data stays 8-byte aligned
        // A fresh name each time, created exclusively and never through a symlink: a link planted in a
        // shared out_dir cannot redirect the write, and a stale temp file from a crash is not reused.
        let temp = path + ".tmp.\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CheckpointError(temp, "cannot create: \(String(cString: strerror(errno)))") }
        do {
            defer { close(fd) }
            var length = UInt64(json.count).littleEndian
            try writeAll(fd, &length, 8, temp)
            try json.withUnsafeBytes { try writeAll(fd, $0.baseAddress!, $0.count, temp) }
            for t in tensors where t.values.count > 0 { try writeAll(fd, t.values.baseAddress!, 4 * t.values.count, temp) }
            guard fsync(fd) == 0 else { throw CheckpointError(temp, "fsync failed: \(String(cString: strerror(errno)))") }
        } catch {
            unlink(temp)
            throw error
        }
        guard rename(temp, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temp)
            throw CheckpointError(path, "cannot rename \(temp) into place: \(reason)")
        }
        let parent = parentDirectory(path)
        let dir = open(parent.isEmpty ? "." : parent, O_RDONLY)
        if dir >= 0 { fsync(dir); close(dir) }
    }

    private func writeAll(_ fd: Int32, _ p: UnsafeRawPointer, _ count: Int, _ path: String) throws {
        var done = 0
        while done < count {
            let n = Glibc.write(fd, p + done, count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw CheckpointError(path, "write failed after \(done) of \(count) bytes: \(String(cString: strerror(errno)))") }
            done += n
        }
    }
}

/// A checkpoint read back and verified: tensors by name and the metadata strings.
public struct LoadedCheckpoint {
    public let path: String
    public let metadata: [String: String]
    public let tensors: [String: (shape: [Int], values: [Float])]

    /// A checkpoint file, or a sharded checkpoint's directory (assembled into the same tensors).
    public init(path: String) throws {
        if ShardedCheckpoint.isSharded(path) {
            let (metadata, tensors) = try ShardedCheckpoint.load(path)
            self.init(path: path, metadata: metadata, tensors: tensors)
            return
        }
        try self.init(data: try readCheckpointFile(path), path: path)
    }

    init(path: String, metadata: [String: String], tensors: [String: (shape: [Int], values: [Float])]) {
        self.path = path; self.metadata = metadata; self.tensors = tensors
    }

    /// Verifies and decodes checkpoint bytes; `path` only names them in errors.
    public init(data: Data, path: String) throws {
        self.path = path
        let (headerLength, header) = try parseCheckpointHeader(data.prefix(8 + Checkpoint.maxHeaderBytes), fileSize: data.count, path: path)
        guard let metadata = header["__metadata__"]?.stringMap else {
            throw CheckpointError(path, "header has no __metadata__ string map")
        }
        let body = data.subdata(in: (8 + headerLength)..<data.count)
        var entries: [(name: String, shape: [Int], start: Int, end: Int)] = []
        for (name, value) in header where name != "__metadata__" {
            guard value["dtype"]?.stringValue == "F32",
                  let shape = value["shape"]?.integers, shape.allSatisfy({ $0 >= 0 }),
                  let offsets = value["data_offsets"]?.integers, offsets.count == 2 else {
                throw CheckpointError(path, "tensor \(name): malformed header entry (need dtype F32, shape, data_offsets)")
            }
            // Checked: a shape like [2^62] or [2^32, 2^32] must be refused, not overflow.
            var count = 1
            for d in shape {
                let (product, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow, product <= body.count / 4 else {
                    throw CheckpointError(path, "tensor \(name): shape \(shape) needs more than the \(body.count) data bytes")
                }
                count = product
            }
            guard offsets[0] >= 0, offsets[0] <= body.count, offsets[1] == offsets[0] + 4 * count, offsets[1] <= body.count else {
                throw CheckpointError(path, "tensor \(name): data_offsets \(offsets) do not fit shape \(shape) in \(body.count) data bytes")
            }
            entries.append((name, shape, offsets[0], offsets[1]))
        }
        // The tensors must tile the data section: sorted by start, each begins where the last ended.
        var next = 0
        for e in entries.sorted(by: { ($0.start, $0.end) < ($1.start, $1.end) }) {
            guard e.start == next else {
                throw CheckpointError(path, e.start < next ? "tensor \(e.name) overlaps the bytes of another tensor (offset \(e.start))"
                                                           : "data bytes \(next)..<\(e.start) belong to no tensor")
            }
            next = e.end
        }
        guard next == body.count else {
            throw CheckpointError(path, "data section has \(body.count) bytes but the tensors cover \(next) (truncated or padded)")
        }
        let dataCRC = body.withUnsafeBytes { raw in crc32(0, raw.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt32(raw.count)) }
        if let stored = metadata["checksum"] {
            var whole = checkpointHeaderChecksum(entries: entries.map { ($0.name, $0.shape, $0.start, $0.end) }, metadata: metadata)
            whole = body.withUnsafeBytes { raw in crc32(whole, raw.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt32(raw.count)) }
            guard stored == String(whole, radix: 16) else {
                throw CheckpointError(path, "checksum mismatch over header and data (stored \(stored), computed \(String(whole, radix: 16))): the file is corrupt")
            }
        } else {
            // Files from before the header checksum carry version "1" and a data-only CRC; anything else
            // without "checksum" was damaged (the key itself is covered by nothing else).
            guard metadata["version"] == "1" else {
                throw CheckpointError(path, "metadata has no checksum: the file is corrupt or not a checkpoint")
            }
            guard metadata["crc32"] == String(dataCRC, radix: 16) else {
                throw CheckpointError(path, "checksum mismatch (stored \(metadata["crc32"] ?? "none"), computed \(String(dataCRC, radix: 16))): the file is corrupt")
            }
        }
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for e in entries {
            let values = body.withUnsafeBytes { raw in
                (0..<((e.end - e.start) / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: e.start + 4 * $0, as: UInt32.self))) }
            }
            tensors[e.name] = (e.shape, values)
        }
        self.metadata = metadata
        self.tensors = tensors
    }

    /// Copies tensor `name` into `destination`, which must have the same element count and shape.
    public func restore(_ name: String, shape: [Int], into destination: UnsafeMutablePointer<Float>) throws {
        guard let t = tensors[name] else { throw CheckpointError(path, "has no tensor \(name)") }
        guard t.shape == shape else { throw CheckpointError(path, "tensor \(name) has shape \(t.shape), the model needs \(shape)") }
        t.values.withUnsafeBufferPointer { destination.update(from: $0.baseAddress!, count: $0.count) }
    }

    public func require(_ key: String) throws -> String {
        guard let v = metadata[key] else { throw CheckpointError(path, "metadata has no \(key)") }
        return v
    }
}

/// CRC-32 of a canonical form of the header: tensor entries sorted by name, then metadata sorted by key
/// (without "checksum" itself), every string length-prefixed so no two headers share a form.
func checkpointHeaderChecksum(entries: [(String, [Int], Int, Int)], metadata: [String: String]) -> UInt {
    var bytes: [UInt8] = []
    func add(_ value: Int) { withUnsafeBytes(of: Int64(value).littleEndian) { bytes.append(contentsOf: $0) } }
    func add(_ text: String) { let utf8 = Array(text.utf8); add(utf8.count); bytes.append(contentsOf: utf8) }
    for (name, shape, start, end) in entries.sorted(by: { $0.0 < $1.0 }) {
        add(name); add(shape.count); shape.forEach { add($0) }; add(start); add(end)
    }
    for (key, value) in metadata.sorted(by: { $0.key < $1.key }) where key != "checksum" { add(key); add(value) }
    return bytes.withUnsafeBufferPointer { crc32(0, $0.baseAddress, UInt32($0.count)) }
}

/// Length and JSON object of a checkpoint header, from the file's first bytes; `fileSize` bounds it.
func parseCheckpointHeader(_ head: Data, fileSize: Int, path: String) throws -> (Int, [String: JSONValue]) {
    guard head.count >= 8 else { throw CheckpointError(path, "truncated: \(fileSize) bytes, no header") }
    // Compared as UInt64 first: a length of 2^63 or more must be refused, not converted (found by fuzzing).
    let declared = head.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    guard declared > 0, declared <= UInt64(Checkpoint.maxHeaderBytes), declared <= UInt64(fileSize - 8),
          declared <= UInt64(head.count - 8) else {
        throw CheckpointError(path, "header length \(declared) is impossible for a file of \(fileSize) bytes")
    }
    let length = Int(declared)
    let start = head.startIndex + 8
    let parsed: JSONValue
    do { parsed = try JSONValue.parse(head[start..<(start + length)]) } catch {
        throw CheckpointError(path, "header is not JSON: \(error)")
    }
    guard let header = parsed.objectValue else { throw CheckpointError(path, "header is not a JSON object") }
    return (length, header)
}

/// Reads a checkpoint file: a regular file only (not a FIFO or a device), header first, so a huge or
/// hostile file is refused before its data is read; then exactly the bytes the header accounts for.
func readCheckpointFile(_ path: String) throws -> Data {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { throw CheckpointError(path, "cannot read (missing or unreadable): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
        throw CheckpointError(path, "is not a regular file")
    }
    let size = Int(info.st_size)
    func read(_ count: Int, at offset: Int) throws -> Data {
        var data = Data(count: count)
        let got = data.withUnsafeMutableBytes { raw -> Int in
            var done = 0
            while done < count {
                let n = pread(fd, raw.baseAddress! + done, count - done, off_t(offset + done))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                done += n
            }
            return done
        }
        guard got == count else { throw CheckpointError(path, "truncated while reading: \(got) of \(count) bytes at offset \(offset)") }
        return data
    }
    let head = try read(min(size, 8 + Checkpoint.maxHeaderBytes), at: 0)
    let (headerLength, header) = try parseCheckpointHeader(head, fileSize: size, path: path)
    // The data the header declares must be what the file holds, before any of it is read.
    var declared = 0
    for (name, value) in header where name != "__metadata__" {
        if let offsets = value["data_offsets"]?.integers, offsets.count == 2 { declared = max(declared, offsets[1]) }
    }
    guard declared == size - 8 - headerLength else {
        throw CheckpointError(path, "the header accounts for \(declared) data bytes but the file holds \(size - 8 - headerLength)")
    }
    return head.prefix(8 + headerLength) + (try read(size - 8 - headerLength, at: 8 + headerLength))
}
