import CZlib
import Foundation
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
/// little-endian float32 data. The metadata carries a CRC-32 of the data section; every offset and shape
/// is checked against the file before a byte is used. Files are written atomically: temp file, fsync,
/// rename, fsync of the directory, so a crash leaves the old checkpoint or the new one, never a mix.
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
        var header: [String: Any] = [:]
        for t in tensors {
            precondition(t.shape.reduce(1, *) == t.values.count, "checkpoint tensor \(t.name) shape/count mismatch")
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.values.count]]
            offset += 4 * t.values.count
        }
        var crc = crc32(0, nil, 0)
        for t in tensors where t.values.count > 0 {
            crc = crc32(crc, UnsafeRawPointer(t.values.baseAddress!).assumingMemoryBound(to: UInt8.self), UInt32(4 * t.values.count))
        }
        var meta = metadata
        meta["crc32"] = String(crc, radix: 16)
        header["__metadata__"] = meta
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) } // pad with spaces: data stays 8-byte aligned
        let temp = path + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
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
        let dir = open((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent, O_RDONLY)
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

    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CheckpointError(path, "cannot read (missing or unreadable)")
        }
        try self.init(data: data, path: path)
    }

    /// Verifies and decodes checkpoint bytes; `path` only names them in errors.
    public init(data: Data, path: String) throws {
        self.path = path
        guard data.count >= 8 else { throw CheckpointError(path, "truncated: \(data.count) bytes, no header") }
        // Compared as UInt64 first: a length of 2^63 or more must be refused, not converted (found by fuzzing).
        let declared = data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard declared > 0, declared <= UInt64(Checkpoint.maxHeaderBytes), declared <= UInt64(data.count - 8) else {
            throw CheckpointError(path, "header length \(declared) is impossible for a file of \(data.count) bytes")
        }
        let headerLength = Int(declared)
        guard let header = try? JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + headerLength))) as? [String: Any] else {
            throw CheckpointError(path, "header is not a JSON object")
        }
        guard let metadata = header["__metadata__"] as? [String: String] else {
            throw CheckpointError(path, "header has no __metadata__ string map")
        }
        let body = data.subdata(in: (8 + headerLength)..<data.count)
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        var covered = 0
        for (name, value) in header where name != "__metadata__" {
            guard let entry = value as? [String: Any], entry["dtype"] as? String == "F32",
                  let shape = entry["shape"] as? [Int], shape.allSatisfy({ $0 >= 0 }),
                  let offsets = entry["data_offsets"] as? [Int], offsets.count == 2 else {
                throw CheckpointError(path, "tensor \(name): malformed header entry (need dtype F32, shape, data_offsets)")
            }
            let count = shape.reduce(1, *)
            guard offsets[0] >= 0, offsets[1] == offsets[0] + 4 * count, offsets[1] <= body.count else {
                throw CheckpointError(path, "tensor \(name): data_offsets \(offsets) do not fit shape \(shape) in \(body.count) data bytes")
            }
            covered += 4 * count
            let values = body.subdata(in: offsets[0]..<offsets[1]).withUnsafeBytes { raw in
                (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
            }
            tensors[name] = (shape, values)
        }
        guard covered == body.count else {
            throw CheckpointError(path, "data section has \(body.count) bytes but the tensors cover \(covered) (truncated or padded)")
        }
        let crc = body.withUnsafeBytes { raw in
            crc32(0, raw.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt32(raw.count))
        }
        guard metadata["crc32"] == String(crc, radix: 16) else {
            throw CheckpointError(path, "checksum mismatch (stored \(metadata["crc32"] ?? "none"), computed \(String(crc, radix: 16))): the file is corrupt")
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
