import Collectives
import NN
import Parallel
import Rendezvous
import Tensors

// Checks the tensor-parallel GPT on real ranks (the group is the whole world, tensor-parallel size =
// world size) against the same model on one rank, computed on every rank from the same seed:
//   1. the sharded forward: this rank's vocabulary columns of the logits and the loss equal the
//      unsharded model's;
//   2. the sharded backward: the gradient assembled from every rank's shard equals the unsharded one;
//   3. finite differences through the sharded model itself, for every parameter: column-parallel
//      (c_attn, c_fc), row-parallel (c_proj), vocabulary-parallel (the tied embedding/head and the
//      cross-entropy), and the replicated LayerNorms, position embedding and biases.
// The vocabulary (11) is not a multiple of 2 or 4, so the padding rows are exercised; biases are on,
// so the row-parallel bias path is too. With `experts` both blocks are mixtures of 4 experts (top-2,
// capacity factor 1.0, so choices drop, and the auxiliary loss), split over the group.

public struct TensorParallelCheckFailure: Error, CustomStringConvertible {
    public let description: String
}

/// Returns the number of checks that passed; throws on the first failure (naming the parameter).
public func runTensorParallelCheck(world: ProcessGroup, sequenceParallel: Bool, experts: Bool = false, log: (String) -> Void) throws -> Int {
    let configuration = GPTConfiguration(vocabularySize: 11, blockSize: 8, layers: 2, heads: 4, embedding: 16, bias: true,
                                         experts: experts ? MoEConfiguration(experts: 4, topK: 2, capacityFactor: 1.0) : nil)
    let (batch, time) = (2, 8)
    // Weights larger than nanoGPT's 0.02 so that every path carries a gradient well above float noise.
    let reference = GPT(configuration)
    reference.initialize(seed: 7)
    var rng = SeededRandom(seed: 8)
    for p in reference.parameters.parameters where !p.name.hasSuffix("ln_1.weight") && !p.name.hasSuffix("ln_2.weight") {
        p.value.fillNormal(std: 0.3, using: &rng)
    }
    let tokens = (0..<(batch * time)).map { _ in Int32(rng.nextInt(below: configuration.vocabularySize)) }
    let targets = (0..<(batch * time)).map { _ in Int32(rng.nextInt(below: configuration.vocabularySize)) }
    let data = TokenBatch(tokens: tokens, targets: targets, batchSize: batch, time: time)

    let communicator = GroupCommunicator(group: world)
    let model = GPT(configuration, parallel: TensorParallelism(communicator: communicator, sequenceParallel: sequenceParallel))
    let sharding = model.sharding
    sharding.scatter(full: reference.parameters.values.base, into: model.parameters.values.base)
    var checks = 0
    func require(_ ok: Bool, _ what: @autoclosure () -> String) throws {
        guard ok else { throw TensorParallelCheckFailure(description: "rank \(world.rank): \(what())") }
        checks += 1
    }

    // 1. Forward.
    let expectedLoss = try reference.forward(data)
    let loss = try model.forward(data)
    try require(abs(loss - expectedLoss) <= 1e-5 * abs(expectedLoss), "loss \(loss), one rank \(expectedLoss)")
    let first = model.vocabulary.first, owned = model.vocabulary.owned
    let logits = try model.logits(tokens: tokens, batch: batch, time: time)
    let expectedLogits = try reference.logits(tokens: tokens, batch: batch, time: time)
    var worstLogit: Float = 0
    for r in 0..<(batch * time) {
        for c in 0..<owned {
            worstLogit = max(worstLogit, abs(logits[r * owned + c] - expectedLogits[r * configuration.vocabularySize + first + c]))
        }
    }
    try require(worstLogit <= 1e-5, "logits differ from one rank's by \(worstLogit)")

    // 2. Backward, assembled.
    reference.parameters.zeroGradients(); model.parameters.zeroGradients()
    try reference.backward(lossScale: 1)
    try model.backward(lossScale: 1)
    try sumSequenceParallelPartials(model, communicator)
    let gathered = FloatBuffer(count: sharding.localCount * world.worldSize)
    (gathered.base + world.rank * sharding.localCount).update(from: model.parameters.gradients.base, count: sharding.localCount)
    try allgather(gathered.buffer, group: world)
    let assembled = FloatBuffer(count: sharding.fullCount)
    sharding.assemble(gathered: gathered.base, into: assembled.base)
    for (name, shape, offset) in sharding.fullParameters {
        let n = shape.reduce(1, *)
        var difference = 0.0, norm = 0.0
        for i in offset..<(offset + n) {
            let e = Double(reference.parameters.gradients.base[i]), g = Double(assembled.base[i])
            difference += (e - g) * (e - g); norm += e * e
        }
        try require(difference.squareRoot() <= 1e-4 * norm.squareRoot() + 1e-7,
                    "\(name): assembled gradient differs from one rank's by \(difference.squareRoot()) (norm \(norm.squareRoot()))")
    }
    let wte = model.parameters["transformer.wte.weight"]
    for row in owned..<model.vocabulary.rows {
        for j in 0..<configuration.embedding {
            try require(wte.gradient[row * configuration.embedding + j] == 0, "padding row \(row) of the embedding has a gradient")
        }
    }

    // 3. Finite differences through the sharded model (not with mixtures: routing is piecewise, and a
    // step can move a choice to another expert or past capacity; the one-rank mixture's backward meets
    // finite differences in MixtureOfExpertsTests, and 2. holds the split one to it). Each rank moves entry i of its own shard at the
    // same time, so a sharded tensor's numeric derivative is the sum of the ranks' analytic ones; a
    // replicated tensor moves the same entry everywhere (one entry of the full model).
    let analytic = Array(model.parameters.gradients.buffer)
    let step: Float = 1e-3
    var probe = SeededRandom(seed: 99)
    for shard in sharding.shards where !experts {
        let p = shard.local, n = p.value.count, entries = min(n, 24)
        let start = probe.nextInt(below: n)
        var difference = 0.0, norm = 0.0
        for k in 0..<entries {
            let i = (start + k * n / entries) % n
            let saved = p.value[i]
            p.value[i] = saved + step
            let up = Double(try model.forward(data))
            p.value[i] = saved - step
            let down = Double(try model.forward(data))
            p.value[i] = saved
            let numeric = (up - down) / Double(2 * step)
            var a = [analytic[p.offset + i]]
            if shard.kind != .replicated { a = try sumOverGroup(a, world) }
            difference += (numeric - Double(a[0])) * (numeric - Double(a[0])); norm += numeric * numeric
        }
        // Float32 forward: each numeric derivative carries ~eps |loss| / step = 3e-4 of noise.
        try require(difference.squareRoot() <= 3e-3 * norm.squareRoot() + 1e-3,
                    "\(p.name): finite differences disagree with backward by \(difference.squareRoot()) (norm \(norm.squareRoot()))")
    }
    log("rank \(world.rank): tensor parallel \(world.worldSize)\(sequenceParallel ? " + sequence parallel" : "")\(experts ? ", mixtures of experts" : ""): loss \(loss) (one rank \(expectedLoss)), logits within \(worstLogit)")
    return checks
}

/// What the trainer does after backward under sequence parallelism: LayerNorm and position-embedding
/// gradients were computed over this rank's rows only.
func sumSequenceParallelPartials(_ model: GPT, _ communicator: GroupCommunicator) throws {
    guard model.parallel?.sequenceParallel == true else { return }
    for r in model.sharding.sequenceParallelPartialRanges {
        try communicator.allreduceSum(UnsafeMutableBufferPointer(rebasing: model.parameters.gradients.buffer[r]))
    }
}

func sumOverGroup(_ values: [Float], _ group: ProcessGroup) throws -> [Float] {
    var copy = values
    try copy.withUnsafeMutableBufferPointer { try allreduce($0, op: .sum, group: group) }
    return copy
}
