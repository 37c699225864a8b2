import FoundationEssentials
import Glibc
import Support
import Tensors

/// Sharded checkpoints, PyTorch DCP's idea in our file format: a directory holding `index.safetensors`
/// (no tensors; the run's checkpoint metadata plus the layout) and a subdirectory of shard files, one per
/// rank, each holding the ranges of the flat parameter buffer and of the optimizer state that rank owns,
/// as 1-D tensors named "values@START" and "optimizer.NAME@START". Saving writes every shard into a
/// fresh subdirectory, then rank 0 replaces the index (atomically, like every file we write) and removes
/// older subdirectories, so a crash at any point leaves the previous checkpoint readable. Loading checks
/// that every shard belongs to the index's save and that the shards tile each flat buffer exactly, and
/// yields the tensors of the single-file form: whatever reads a checkpoint reads this, at any world size
/// or ZeRO stage, and `ddp-train consolidate` writes the single file.
public enum ShardedCheckpoint {
    public static let indexName = "index.safetensors"

    /// Whether `path` is a sharded checkpoint's directory.
    public static func isSharded(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    static func shardName(rank: Int, world: Int) -> String {
        format("shard-%05d-of-%05d.safetensors", rank, world)
    }

    /// Rank `rank`'s file: `pieces` are (flat buffer name, start, values), the buffer names "values" and
    /// "optimizer.NAME". Every rank calls this with the same `save` (the subdirectory's name).
    public static func writeShard(to path: String, save: String, rank: Int, world: Int,
                                  pieces: [(buffer: String, start: Int, values: UnsafeBufferPointer<Float>)]) throws {
        let directory = path + "/" + save
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw CheckpointError(directory, "cannot create the shard directory: \(error)")
        }
        let tensors = pieces.map { (name: "\($0.buffer)@\($0.start)", shape: [$0.values.count], values: $0.values) }
        try Checkpoint(tensors: tensors, metadata: ["format": "swift-ddp-shard", "save": save, "rank": String(rank), "world": String(world)])
            .write(to: directory + "/" + shardName(rank: rank, world: world))
    }

    /// Rank 0, after every shard is written: the index naming `save`'s shards, then the older saves go.
    public static func writeIndex(to path: String, save: String, world: Int, metadata: [String: String],
                                  parameters: [(name: String, shape: [Int], offset: Int)], flatCount: Int, state: [String]) throws {
        var meta = metadata
        let layout: JSONValue = [
            "save": .string(save), "world": JSONValue(world), "flat_count": JSONValue(flatCount), "state": JSONValue(state),
            "parameters": .array(parameters.map { ["name": .string($0.name), "shape": JSONValue($0.shape), "offset": JSONValue($0.offset)] }),
        ]
        meta["sharded_layout"] = layout.serialized()
        try Checkpoint(tensors: [], metadata: meta).write(to: path + "/" + indexName)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        for entry in entries where entry != save && entry != indexName && !entry.hasPrefix(indexName) {
            try? FileManager.default.removeItem(atPath: path + "/" + entry)
        }
    }

    /// The single-file form of the sharded checkpoint at `path`: metadata (without the layout) and tensors.
    static func load(_ path: String) throws -> (metadata: [String: String], tensors: [String: (shape: [Int], values: [Float])]) {
        let (metadata, tensors, _) = try loadInOrder(path)
        return (metadata, tensors)
    }

    /// Writes the single-file checkpoint of the sharded one at `path`: the same tensors, in the model's
    /// order (parameters, then optimizer state), and the same metadata. Returns the tensor count.
    @discardableResult
    public static func consolidate(_ path: String, into output: String) throws -> Int {
        let (metadata, tensors, order) = try loadInOrder(path)
        var list: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = []
        let storage = order.map { tensors[$0]!.values }
        var pointers: [UnsafeMutableBufferPointer<Float>] = []
        defer { pointers.forEach { $0.deallocate() } }
        for (name, values) in zip(order, storage) {
            let copy = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(values.count, 1))
            _ = copy.initialize(from: values)
            pointers.append(copy)
            list.append((name, tensors[name]!.shape, UnsafeBufferPointer(rebasing: copy[0..<values.count])))
        }
        try Checkpoint(tensors: list, metadata: metadata).write(to: output)
        return list.count
    }

    static func loadInOrder(_ path: String) throws -> (metadata: [String: String], tensors: [String: (shape: [Int], values: [Float])], order: [String]) {
        let index = try LoadedCheckpoint(data: try readCheckpointFile(path + "/" + indexName), path: path + "/" + indexName)
        var metadata = index.metadata
        guard let text = metadata.removeValue(forKey: "sharded_layout"),
              let layout = try? JSONValue.parse(text),
              let save = layout["save"]?.stringValue, let world = layout["world"]?.intValue, world >= 1,
              let flat = layout["flat_count"]?.intValue, flat >= 0, let state = layout["state"]?.strings,
              let entries = layout["parameters"]?.arrayValue else {
            throw CheckpointError(path, "the index has no readable sharded_layout")
        }
        metadata.removeValue(forKey: "checksum"); metadata.removeValue(forKey: "crc32")
        let buffers = ["values"] + state.map { "optimizer." + $0 }
        var flats = Dictionary(uniqueKeysWithValues: buffers.map { ($0, [Float](repeating: 0, count: flat)) })
        var covered = Dictionary(uniqueKeysWithValues: buffers.map { ($0, [Range<Int>]()) })
        for rank in 0..<world {
            let file = path + "/" + save + "/" + shardName(rank: rank, world: world)
            guard FileManager.default.fileExists(atPath: file) else {
                throw CheckpointError(path, "shard \(rank) of \(world) is missing (\(file)): the save did not finish or files were moved")
            }
            let shard = try LoadedCheckpoint(path: file)
            guard shard.metadata["save"] == save, shard.metadata["rank"] == String(rank) else {
                throw CheckpointError(file, "belongs to save \(shard.metadata["save"] ?? "?") rank \(shard.metadata["rank"] ?? "?"), the index names save \(save) rank \(rank)")
            }
            for (name, tensor) in shard.tensors {
                let parts = name.split(separator: "@")
                guard parts.count == 2, let start = Int(parts[1]), let buffer = buffers.first(where: { $0 == parts[0] }),
                      start >= 0, start + tensor.values.count <= flat else {
                    throw CheckpointError(file, "tensor \(name) is not a piece of a buffer of \(flat) floats")
                }
                flats[buffer]!.withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: start).update(from: tensor.values, count: tensor.values.count) }
                covered[buffer]!.append(start..<(start + tensor.values.count))
            }
        }
        for buffer in buffers {
            var next = 0
            for r in covered[buffer]!.sorted(by: { $0.lowerBound < $1.lowerBound }) where !r.isEmpty {
                guard r.lowerBound == next else {
                    throw CheckpointError(path, r.lowerBound < next ? "\(buffer): two shards both hold floats from \(r.lowerBound)"
                                                                    : "\(buffer): no shard holds floats \(next)..<\(r.lowerBound)")
                }
                next = r.upperBound
            }
            guard next == flat else { throw CheckpointError(path, "\(buffer): no shard holds floats \(next)..<\(flat)") }
        }
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        var order: [String] = []
        let values = flats["values"]!
        for entry in entries {
            guard let name = entry["name"]?.stringValue, let shape = entry["shape"]?.integers, let offset = entry["offset"]?.intValue,
                  shape.allSatisfy({ $0 >= 0 }), offset >= 0, offset + shape.reduce(1, *) <= flat else {
                throw CheckpointError(path, "the index's parameter table has a malformed entry")
            }
            tensors[name] = (shape, Array(values[offset..<(offset + shape.reduce(1, *))]))
            order.append(name)
        }
        for name in state {
            tensors["optimizer." + name] = ([flat], flats["optimizer." + name]!)
            order.append("optimizer." + name)
        }
        return (metadata, tensors, order)
    }
}
