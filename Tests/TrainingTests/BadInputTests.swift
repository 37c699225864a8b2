import Datasets
import Foundation
import NN
import Tensors
import Training
import TestSupport
import XCTest

/// Bad configs, data files and checkpoints are refused with errors that name the key or the file.
final class BadInputTests: XCTestCase {
    func configError(_ json: String, overrides: [String] = []) -> ConfigError? {
        do {
            _ = try TrainConfig.load(json: Data(json.utf8), overrides: overrides, file: "test.json")
            return nil
        } catch let error as ConfigError {
            return error
        } catch {
            XCTFail("unexpected error type \(error)")
            return nil
        }
    }

    func testConfigErrorsNameTheKey() {
        XCTAssertEqual(configError(#"{"batch_sise": 4}"#)?.key, "batch_sise")
        XCTAssertEqual(configError(#"{"batch_size": "four"}"#)?.key, "batch_size")
        XCTAssertEqual(configError(#"{"batch_size": 0}"#)?.key, "batch_size")
        XCTAssertEqual(configError(#"{"learning_rate": -1}"#)?.key, "learning_rate")
        XCTAssertEqual(configError(#"{"model": "rnn"}"#)?.key, "model")
        XCTAssertEqual(configError(#"{"n_embd": 130, "n_head": 4}"#)?.key, "n_embd")
        XCTAssertEqual(configError(#"{"model": "mlp", "dataset": "shakespeare"}"#)?.key, "dataset")
        XCTAssertEqual(configError(#"{"dropout": 0.1}"#)?.key, "dropout")
        XCTAssertEqual(configError("{}", overrides: ["max_iterz=3"])?.key, "max_iterz")
        XCTAssertEqual(configError("{}", overrides: ["novalue"])?.key, "novalue")
        XCTAssertNotNil(configError("[1, 2]"))
        XCTAssertNotNil(configError("{not json"))
        // Values that pass the simple checks but could not be allocated: refused, naming the key.
        XCTAssertEqual(configError(#"{"batch_size": 4611686018427387904}"#)?.key, "batch_size")
        XCTAssertEqual(configError(#"{"batch_size": 10000000}"#)?.key, "batch_size")
        XCTAssertEqual(configError(#"{"n_embd": 1048576, "n_head": 4}"#)?.key, "n_embd")
        XCTAssertEqual(configError(#"{"n_embd": 1099511627776, "n_head": 4}"#)?.key, "n_embd")
        XCTAssertTrue(configError(#"{"batch_size": 10000000}"#)?.description.contains("more than this machine's") ?? false)
        // null does not silently mean the default; a key twice is refused (also nested values are skipped).
        XCTAssertEqual(configError(#"{"batch_size": null}"#)?.key, "batch_size")
        XCTAssertEqual(configError(#"{"batch_size": 4, "seed": 1, "batch_size": 8}"#)?.key, "batch_size")
        XCTAssertEqual(configError(#"{"out_dir": "a\"b", "seed": 2, "seed": 3}"#)?.key, "seed")
        XCTAssertNil(configError(#"{"epochs": null, "seed": 3}"#), "epochs: null means no epoch limit")
        // Numbers pass through exactly: a 64-bit seed past 2^53 is not rounded through a double.
        XCTAssertEqual(try TrainConfig.load(json: Data(#"{"seed": 18446744073709551615}"#.utf8)).seed, UInt64.max)
        XCTAssertEqual(try TrainConfig.load(json: Data("{}".utf8), overrides: ["seed=9007199254740993"]).seed, 9007199254740993)
        // Tensor parallelism: divides n_head, GPT only, sequence parallelism needs it and divisible rows.
        XCTAssertEqual(configError(#"{"n_head": 6, "n_embd": 48, "tensor_parallel": 4}"#)?.key, "tensor_parallel")
        XCTAssertEqual(configError(#"{"tensor_parallel": 0}"#)?.key, "tensor_parallel")
        XCTAssertEqual(configError(#"{"model": "mlp", "dataset": "mnist", "tensor_parallel": 2}"#)?.key, "tensor_parallel")
        XCTAssertEqual(configError(#"{"sequence_parallel": true}"#)?.key, "sequence_parallel")
        XCTAssertEqual(configError(#"{"n_head": 4, "n_embd": 32, "tensor_parallel": 4, "sequence_parallel": true, "batch_size": 1, "block_size": 6}"#)?.key,
                       "sequence_parallel")
        XCTAssertNil(configError(#"{"n_head": 4, "n_embd": 32, "tensor_parallel": 4, "sequence_parallel": true}"#))
        let message = configError(#"{"batch_size": 0}"#)?.description ?? ""
        XCTAssertTrue(message.contains("test.json") && message.contains("batch_size"), message)
    }

    /// Config paths that are not small regular files are refused before reading, naming the path.
    func testUntrustworthyConfigPathsAreRefused() throws {
        let dir = scratchDirectory("config-paths")
        let big = dir + "/big.json"
        _ = FileManager.default.createFile(atPath: big, contents: Data(repeating: 0x20, count: TrainConfig.maxConfigBytes + 1))
        for (path, mentions) in [("/dev/zero", "not a regular file"), (dir, "not a regular file"), (big, "at most"),
                                 (dir + "/missing.json", "cannot read")] {
            XCTAssertThrowsError(try TrainConfig.load(path: path), path) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains(path) && text.contains(mentions), text)
            }
        }
    }

    /// Every key is described for `ddp-train config`; a misspelt key gets the nearest one; a bad value
    /// from --set is blamed on the flag; nanoGPT's --max_iters=10 is read as --set max_iters=10.
    func testConfigKeysAreDescribedAndMistakesGetHints() throws {
        XCTAssertEqual(Set(TrainConfig.keyDescriptions.map(\.key)), Set(TrainConfig.knownKeys), "a key without a description (or a described key that does not exist)")
        XCTAssertEqual(TrainConfig.reference().count, TrainConfig.knownKeys.count)
        XCTAssertTrue(configError(#"{"batch_sise": 4}"#)?.description.contains("did you mean 'batch_size'?") ?? false)
        XCTAssertTrue(configError(#"{"maxIters": 4}"#)?.description.contains("did you mean 'max_iters'?") ?? false)
        XCTAssertFalse(configError(#"{"zzzzzzzzzzzz": 4}"#)?.description.contains("did you mean") ?? true)
        let flagged = configError("{}", overrides: ["batch_size=0"])
        XCTAssertTrue(flagged?.description.hasPrefix("--set batch_size=0: config key 'batch_size'") ?? false, flagged?.description ?? "")
        let train = DataParallelTests.buildDirectory + "/ddp-train"
        let (status, output, _) = try runToEnd(train, ["train", configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory,
                                                       "--out-dir", scratchDirectory("nanogpt-flags"), "--max_iters=2", "--eval-interval", "1000"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("training 2 iterations") && output.contains("\"eval_interval\":1000"), output)
        let (listed, list, _) = try runToEnd(train, ["config"])
        XCTAssertEqual(listed, 0, list)
        XCTAssertTrue(list.contains("zero_stage") && list.contains("= 0"), list)
    }

    /// The trainer's process maps FoundationEssentials and not Foundation, FoundationInternationalization or
    /// ICU (~10 MiB of its peak RSS): the dynamic loader lists what it would load
    /// (LD_TRACE_LOADED_OBJECTS, what ldd runs), so a new `import Foundation` in a trainer module fails here.
    func testTheTrainerLoadsNoFoundationBeyondEssentials() throws {
        let (status, output, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-train", ["--help"],
                                               environment: ["LD_TRACE_LOADED_OBJECTS": "1"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("libFoundationEssentials.so"), output)
        for library in ["libFoundation.so", "libFoundationInternationalization.so", "lib_FoundationICU.so"] {
            XCTAssertFalse(output.contains(library), "ddp-train loads \(library):\n\(output)")
        }
    }

    /// A symlinked config is followed (what it points to must still be a small regular file); a
    /// block_size longer than a data split is refused before training.
    func testSymlinkedConfigsAreFollowedAndBlockSizeIsCheckedAgainstTheData() throws {
        let dir = scratchDirectory("config-link")
        try FileManager.default.createSymbolicLink(atPath: dir + "/linked.json", withDestinationPath: configsDirectory + "/tiny-gpt.json")
        XCTAssertNoThrow(try TrainConfig.load(path: dir + "/linked.json"))
        try FileManager.default.createSymbolicLink(atPath: dir + "/to-device.json", withDestinationPath: "/dev/zero")
        XCTAssertThrowsError(try TrainConfig.load(path: dir + "/to-device.json")) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
        let small = dir + "/small-data"
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: small + "/tinyshakespeare.txt", contents: Data(String(repeating: "To be, or not to be. ", count: 20).utf8))
        let config = try tinyGPTConfig(["data_dir=\"\(small)\"", "block_size=64"], outDir: dir)
        XCTAssertThrowsError(try makeTask(config)) { XCTAssertTrue("\($0)".contains("block_size") && "\($0)".contains("smallest data split"), "\($0)") }
        // Data files must be regular files: a FIFO would hang the reader, /dev/zero would never end.
        let fifo = dir + "/fifo.txt"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        XCTAssertThrowsError(try readPossiblyGzippedFile(fifo)) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
        XCTAssertThrowsError(try readPossiblyGzippedFile("/dev/zero")) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
    }

    func testShippedConfigsLoadAndOverridesApply() throws {
        for name in ["shakespeare-char", "mnist-mlp", "tiny-gpt"] {
            XCTAssertNoThrow(try TrainConfig.load(path: configsDirectory + "/\(name).json"), name)
        }
        let recipe = try TrainConfig.load(path: configsDirectory + "/shakespeare-char.json", overrides: ["max_iters=5", "seed=3"])
        XCTAssertEqual(recipe.maxIters, 5)
        XCTAssertEqual(recipe.seed, 3)
        XCTAssertEqual([recipe.nLayer, recipe.nHead, recipe.nEmbd, recipe.blockSize, recipe.batchSize], [4, 4, 128, 64, 12])
        XCTAssertEqual(recipe.beta2, 0.99)
        XCTAssertThrowsError(try TrainConfig.load(path: "/nonexistent/config.json"))
    }

    func testMNISTReaderRefusesBrokenFiles() throws {
        let dir = scratchDirectory("mnist-bad")
        let images = try readPossiblyGzippedFile(dataDirectory + "/mnist-t10k-images-idx3-ubyte.gz")
        let labels = try readPossiblyGzippedFile(dataDirectory + "/mnist-t10k-labels-idx1-ubyte.gz")
        // Raw (not gzipped) files read the same as the gzipped ones.
        _ = FileManager.default.createFile(atPath: dir + "/images.raw", contents: Data(images))
        _ = FileManager.default.createFile(atPath: dir + "/labels.raw", contents: Data(labels))
        let raw = try MNIST(imagesPath: dir + "/images.raw", labelsPath: dir + "/labels.raw")
        XCTAssertEqual(raw.count, 10_000)
        XCTAssertEqual(raw.pixelsPerImage, 784)

        func expectError(_ imageBytes: [UInt8], _ labelBytes: [UInt8], mentions: String, file: StaticString = #filePath, line: UInt = #line) {
            _ = FileManager.default.createFile(atPath: dir + "/i", contents: Data(imageBytes))
            _ = FileManager.default.createFile(atPath: dir + "/l", contents: Data(labelBytes))
            XCTAssertThrowsError(try MNIST(imagesPath: dir + "/i", labelsPath: dir + "/l"), file: file, line: line) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains(dir) && text.contains(mentions), text, file: file, line: line)
            }
        }
        expectError(Array(images.dropLast(100)), labels, mentions: "header says 10000 images")
        var badMagic = images; badMagic[3] = 0x04
        expectError(badMagic, labels, mentions: "bad magic")
        expectError(images, Array(labels.dropLast(1)), mentions: "header says 10000 labels")
        var badLabel = labels; badLabel[20] = 42
        expectError(images, badLabel, mentions: "label 42")
        expectError(Array(images[0..<10]), labels, mentions: "too short")

        // A gzip stream cut in half is reported as truncated or corrupt.
        let gz = try Data(contentsOf: URL(fileURLWithPath: dataDirectory + "/mnist-t10k-labels-idx1-ubyte.gz"))
        _ = FileManager.default.createFile(atPath: dir + "/cut.gz", contents: gz.prefix(gz.count / 2))
        XCTAssertThrowsError(try readPossiblyGzippedFile(dir + "/cut.gz")) { XCTAssertTrue("\($0)".contains("gzip"), "\($0)") }
        XCTAssertThrowsError(try readPossiblyGzippedFile(dir + "/missing")) { XCTAssertTrue("\($0)".contains("cannot open"), "\($0)") }
    }

    func testCheckpointRefusesCorruptTruncatedAndMismatchedFiles() throws {
        let dir = scratchDirectory("ckpt-bad")
        let config = try tinyGPTConfig(["max_iters=3", "eval_interval=1000"], outDir: dir)
        let trainer = Trainer(config: config, task: try makeTask(config), log: { _ in })
        _ = try trainer.run()
        let good = try Data(contentsOf: URL(fileURLWithPath: trainer.checkpointPath))
        XCTAssertNoThrow(try LoadedCheckpoint(path: trainer.checkpointPath))
        XCTAssertFalse(FileManager.default.fileExists(atPath: trainer.checkpointPath + ".tmp"), "temp file left behind")

        func refused(_ bytes: Data, mentions: String, file: StaticString = #filePath, line: UInt = #line) {
            let path = dir + "/bad.safetensors"
            _ = FileManager.default.createFile(atPath: path, contents: bytes)
            XCTAssertThrowsError(try trainer.resume(from: path), file: file, line: line) { error in
                XCTAssertTrue("\(error)".contains(mentions), "\(error)", file: file, line: line)
            }
        }
        var flipped = good; flipped[flipped.count - 5] ^= 0x40
        refused(flipped, mentions: "checksum mismatch")
        refused(good.prefix(good.count - 64), mentions: "the header accounts for")
        refused(good.prefix(4), mentions: "truncated")
        var hugeHeader = good; hugeHeader[6] = 0x7F
        refused(hugeHeader, mentions: "header length")
        var garbledHeader = good; garbledHeader[9] = 0x00
        refused(garbledHeader, mentions: "header")

        // The checksum covers the header too: one flipped bit in a metadata value is refused.
        if let range = good.range(of: Data("\"iteration\":\"3\"".utf8)) {
            var metaFlip = good
            metaFlip[range.upperBound - 2] ^= 0x02 // "3" -> "1"
            refused(metaFlip, mentions: "checksum mismatch over header and data")
        } else { XCTFail("no iteration in the header") }

        // Hostile headers: sizes that overflow, overlapping tensors, values out of range.
        func forged(_ entries: [String: Any], data: Int, metadata: [String: String] = [:]) -> Data {
            var header = entries
            header["__metadata__"] = metadata
            var json = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
            while json.count % 8 != 0 { json.append(0x20) }
            var out = Data()
            withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
            return out + json + Data(count: data)
        }
        refused(forged(["w": ["dtype": "F32", "shape": [1 << 62], "data_offsets": [0, 16]]], data: 16), mentions: "needs more than")
        refused(forged(["w": ["dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 16]]], data: 16), mentions: "needs more than")
        refused(forged(["w": ["dtype": "F32", "shape": [2], "data_offsets": [Int.max - 4, 8]]], data: 8), mentions: "do not fit")
        refused(forged(["a": ["dtype": "F32", "shape": [2], "data_offsets": [0, 8]], "b": ["dtype": "F32", "shape": [2], "data_offsets": [4, 12]]], data: 12),
                mentions: "overlaps")
        refused(forged(["w": ["dtype": "F32", "shape": [2], "data_offsets": [0, 8]]], data: 8, metadata: ["version": "2"]), mentions: "no checksum")

        // Metadata values are range-checked, and a checkpoint past max_iters is refused, not trained on forever.
        func rewritten(_ change: (inout [String: String]) -> Void) throws -> Data {
            let loaded = try LoadedCheckpoint(path: trainer.checkpointPath)
            var meta = loaded.metadata
            meta["checksum"] = nil; meta["crc32"] = nil
            change(&meta)
            let buffers = loaded.tensors.sorted { $0.key < $1.key }.map { ($0.key, $0.value.shape, $0.value.values) }
            let path = dir + "/rewritten.safetensors"
            try buffers.map { ($0.0, $0.1, $0.2) }.withStorage { tensors in
                try Checkpoint(tensors: tensors, metadata: meta).write(to: path)
            }
            return try Data(contentsOf: URL(fileURLWithPath: path))
        }
        refused(try rewritten { $0["iteration"] = "-1" }, mentions: "out of range")
        refused(try rewritten { $0["optimizer_steps"] = "-1" }, mentions: "out of range")
        refused(try rewritten { $0["iteration"] = String(Int.max) }, mentions: "past this run's 3 iterations")
        refused(try rewritten { $0["iteration"] = "12429"; $0["optimizer_steps"] = "12429" }, mentions: "past this run's 3 iterations (max_iters)")

        // The temp file is created exclusively: a symlink planted where the old fixed name was is not
        // followed, and no temp file is left behind.
        let victim = dir + "/victim.txt"
        _ = FileManager.default.createFile(atPath: victim, contents: Data("keep".utf8))
        try? FileManager.default.removeItem(atPath: trainer.checkpointPath + ".tmp")
        try FileManager.default.createSymbolicLink(atPath: trainer.checkpointPath + ".tmp", withDestinationPath: victim)
        try trainer.saveCheckpoint()
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "keep")
        XCTAssertNoThrow(try LoadedCheckpoint(path: trainer.checkpointPath))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp.") }
        XCTAssertEqual(leftovers, [])

        // A FIFO in place of a checkpoint is refused at once, not read forever.
        let fifo = dir + "/fifo.safetensors"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        XCTAssertThrowsError(try LoadedCheckpoint(path: fifo)) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }

        let other = try tinyGPTConfig(["n_embd=48"], outDir: scratchDirectory("ckpt-other"))
        let mismatched = Trainer(config: other, task: try makeTask(other), log: { _ in })
        XCTAssertThrowsError(try mismatched.resume(from: trainer.checkpointPath)) { error in
            XCTAssertTrue("\(error)".contains("was written for"), "\(error)")
        }
    }
}

extension Array {
    /// Hands `Checkpoint` buffer views of (name, shape, values) triples, valid for the closure.
    func withStorage<R>(_ body: ([(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)]) throws -> R) throws -> R
        where Element == (String, [Int], [Float]) {
        let copies = map { entry -> (String, [Int], UnsafeMutableBufferPointer<Float>) in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: entry.2.count)
            _ = buffer.initialize(from: entry.2)
            return (entry.0, entry.1, buffer)
        }
        defer { copies.forEach { $0.2.deallocate() } }
        return try body(copies.map { (name: $0.0, shape: $0.1, values: UnsafeBufferPointer($0.2)) })
    }
}

final class DataAndScheduleTests: XCTestCase {
    func testShakespeareVocabularyAndSplit() throws {
        let text = try CharText(path: dataDirectory + "/tinyshakespeare.txt")
        XCTAssertEqual(text.vocabulary.count, 65)
        XCTAssertEqual(text.train.count + text.validation.count, 1_115_394)
        XCTAssertEqual(text.train.count, 1_003_854)
        XCTAssertEqual(text.decode(text.encode("First Citizen:")!), "First Citizen:")
        var rng = SeededRandom(seed: 1)
        let (x, y) = CharText.sampleBatch(from: text.train, batchSize: 3, time: 8, using: &rng)
        XCTAssertEqual(Array(x[1..<8]), Array(y[0..<7]), "targets are the inputs shifted by one")
    }

    func testEpochShardsAreDisjointAndCoverAllButTheRemainder() {
        for world in 1...5 {
            var seen = Set<Int>()
            for rank in 0..<world {
                let shard = epochShard(count: 103, epoch: 2, seed: 9, rank: rank, worldSize: world)
                XCTAssertEqual(shard.count, 103 / world)
                seen.formUnion(shard)
            }
            XCTAssertEqual(seen.count, 103 / world * world, "world \(world): shards overlap")
        }
        XCTAssertNotEqual(epochShard(count: 50, epoch: 0, seed: 1, rank: 0, worldSize: 1),
                          epochShard(count: 50, epoch: 1, seed: 1, rank: 0, worldSize: 1), "each epoch reshuffles")
    }

    func testCosineScheduleMatchesNanoGPT() {
        let s = CosineSchedule(peak: 1e-3, minimum: 1e-4, warmup: 100, decaySteps: 2000)
        XCTAssertEqual(s.learningRate(at: 0), 1e-3 / 101, accuracy: 1e-12)
        XCTAssertEqual(s.learningRate(at: 99), 1e-3 * 100 / 101, accuracy: 1e-10)
        XCTAssertEqual(s.learningRate(at: 100), 1e-3, accuracy: 1e-9)
        XCTAssertEqual(s.learningRate(at: 1050), 5.5e-4, accuracy: 1e-9)
        XCTAssertEqual(s.learningRate(at: 2000), 1e-4, accuracy: 1e-9)
        XCTAssertEqual(s.learningRate(at: 5000), 1e-4)
        XCTAssertEqual(CosineSchedule(peak: 0.05, minimum: 0, warmup: 0, decaySteps: 0, enabled: false).learningRate(at: 77), 0.05)
    }

    func testAdamWAndSGDFollowPyTorchsUpdateRules() {
        var layout = ParameterSet.Layout()
        layout.add("matrix", [2, 17]); layout.add("vector", [3])
        let ps = ParameterSet(layout: layout)
        var rng = SeededRandom(seed: 3)
        for i in 0..<ps.count { ps.values.base[i] = rng.nextNormal() }
        let start = Array(ps.values.buffer)
        let adam = AdamW(ps, .init(beta1: 0.9, beta2: 0.99, epsilon: 1e-8, weightDecay: 0.1))
        var m = [Double](repeating: 0, count: ps.count), v = m, p = start.map(Double.init)
        for step in 1...3 {
            for i in 0..<ps.count { ps.gradients.base[i] = rng.nextNormal() }
            adam.step(learningRate: 0.01)
            for i in 0..<ps.count {
                let g = Double(ps.gradients.base[i])
                if i < 34 { p[i] *= 1 - 0.01 * 0.1 } // decay on the matrix only
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.99 * v[i] + 0.01 * g * g
                let denominator = v[i].squareRoot() / (1 - pow(0.99, Double(step))).squareRoot() + 1e-8
                p[i] -= 0.01 / (1 - pow(0.9, Double(step))) * m[i] / denominator
            }
        }
        for i in 0..<ps.count { XCTAssertEqual(Double(ps.values.base[i]), p[i], accuracy: 1e-5, "AdamW element \(i)") }

        // Gradients of ~1e-8, where sqrt(v) is as small as epsilon: epsilon's place in the update shows
        // (left out, or inside the square root, the step would be about twice or ~1e4 times this one).
        // Each element's movement is compared with the reference's, relative to that movement.
        for i in 0..<ps.count { ps.values.base[i] = start[i] }
        let tiny = AdamW(ps, .init(beta1: 0.9, beta2: 0.99, epsilon: 1e-8, weightDecay: 0))
        var m2 = [Double](repeating: 0, count: ps.count), v2 = m2, p2 = start.map(Double.init)
        for step in 1...3 {
            for i in 0..<ps.count { ps.gradients.base[i] = rng.nextNormal() * 1e-8 }
            tiny.step(learningRate: 0.01)
            for i in 0..<ps.count {
                let g = Double(ps.gradients.base[i])
                m2[i] = 0.9 * m2[i] + 0.1 * g
                v2[i] = 0.99 * v2[i] + 0.01 * g * g
                p2[i] -= 0.01 / (1 - pow(0.9, Double(step))) * m2[i] / (v2[i].squareRoot() / (1 - pow(0.99, Double(step))).squareRoot() + 1e-8)
            }
        }
        for i in 0..<ps.count {
            let moved = Double(ps.values.base[i]) - Double(start[i]), expected = p2[i] - Double(start[i])
            XCTAssertEqual(moved, expected, accuracy: 1e-3 * abs(expected) + 3e-7, "AdamW with tiny gradients, element \(i)")
        }

        for i in 0..<ps.count { ps.values.base[i] = start[i] }
        let sgd = SGD(ps, momentum: 0.9)
        var buf = [Double](repeating: 0, count: ps.count), q = start.map(Double.init)
        for _ in 0..<3 {
            for i in 0..<ps.count { ps.gradients.base[i] = rng.nextNormal() }
            sgd.step(learningRate: 0.1)
            for i in 0..<ps.count { buf[i] = 0.9 * buf[i] + Double(ps.gradients.base[i]); q[i] -= 0.1 * buf[i] }
        }
        for i in 0..<ps.count { XCTAssertEqual(Double(ps.values.base[i]), q[i], accuracy: 1e-5, "SGD element \(i)") }
    }

    /// ZeRO-1 shards: optimizers that each own some pieces (cutting through parameters) update exactly
    /// like one optimizer over everything, and keep state for their pieces only.
    func testShardedOptimizersEqualOneOverTheWholeBuffer() {
        var layout = ParameterSet.Layout()
        layout.add("matrix", [3, 11]); layout.add("vector", [5]); layout.add("embedding", [4, 6])
        let whole = ParameterSet(layout: layout), sharded = ParameterSet(layout: layout)
        var rng = SeededRandom(seed: 11)
        for i in 0..<whole.count { whole.values.base[i] = rng.nextNormal(); sharded.values.base[i] = whole.values.base[i] }
        let pieces: [[Range<Int>]] = [[0..<7, 30..<36], [7..<30, 36..<40, 50..<62], [40..<50]]
        let h = AdamW.Hyperparameters(beta1: 0.9, beta2: 0.99, epsilon: 1e-8, weightDecay: 0.1)
        let reference: [Optimizer] = [AdamW(whole, h), SGD(whole, momentum: 0.9)]
        let owners: [[Optimizer]] = [pieces.map { AdamW(sharded, ranges: $0, h) }, pieces.map { SGD(sharded, ranges: $0, momentum: 0.9) }]
        XCTAssertEqual(owners[0].map(\.ownedCount), [13, 39, 10])
        for (optimizer, shards) in zip(reference, owners) {
            for _ in 0..<3 {
                for i in 0..<whole.count { whole.gradients.base[i] = rng.nextNormal(); sharded.gradients.base[i] = whole.gradients.base[i] }
                optimizer.step(learningRate: 0.01)
                for shard in shards { shard.step(learningRate: 0.01) }
            }
            XCTAssertEqual(Array(whole.values.buffer).map(\.bitPattern), Array(sharded.values.buffer).map(\.bitPattern))
        }
    }

    func testGradientClippingScalesToMaxNorm() {
        var layout = ParameterSet.Layout()
        layout.add("w", [4])
        let ps = ParameterSet(layout: layout)
        for (i, g) in [3, 4, 0, 0].enumerated() { ps.gradients.base[i] = Float(g) }
        XCTAssertEqual(ps.clipGradients(maxNorm: 1), 5)
        XCTAssertEqual(ps.gradientNorm(), 1, accuracy: 1e-5)
        XCTAssertEqual(ps.clipGradients(maxNorm: 10), 1, accuracy: 1e-5)
        XCTAssertEqual(ps.gradientNorm(), 1, accuracy: 1e-5, "below the bound nothing changes")
    }
}
