import Tensors

// A mixture-of-experts MLP (Switch Transformer / GShard routing), with expert parallelism.
//
//   probabilities = softmax(x Wr^T)                        router, [N, E]
//   top-k experts per token; gate = p (top-1), p_j / (p_a + p_b) (top-2, renormalised)
//   capacity per expert = ceil(k · N / E · capacity_factor) (0: dropless); first choices claim places
//   before second choices, each in token order, so which tokens drop depends only on this rank's tokens,
//   never on the layout. A dropped choice contributes nothing: the token passes through the residual.
//   y[t] = Σ_kept gate · expert_e(x[t]),  expert_e = c_proj(gelu(c_fc(.))) as the dense MLP
//   aux = α · E · Σ_i f_i · P_i  (f_i: share of tokens whose first choice is i; P_i: mean probability)
//
// Expert parallelism: the E experts are split over the expert group in consecutive blocks of E / ep;
// each rank routes its own tokens, sends each kept row to the rank holding its expert (dispatch
// all-to-all-v, after a small all-to-all of counts), the experts run on every row they received
// (one GEMM per expert), and the outputs go back the same way (combine). Backward mirrors it: the
// output gradients travel to the experts and the input gradients back, two all-to-all-v each way.
// The expert tensors are stacked, [E, 4C, C] and [E, C, 4C], so a rank's experts are a block of rows.
//
// Tensor parallelism (`split`): every rank of the tensor-parallel group holds the block's whole input
// (all rows, gathered under sequence parallelism) and routes it alike, so nothing is dispatched: each
// rank runs its E / tp experts over the rows routed to them and its output is a partial sum, which the
// block reduces over the group as it reduces the dense MLP's. In backward the gates' gradients (each
// rank sees only its experts' outputs) are summed over the group before the router's backward, which
// every rank then runs alike; its input gradient is added on rank 0 only, since the block sums the
// partial input gradients over the group.

/// What expert parallelism needs from its expert group. NN knows no sockets: the Parallel target
/// implements it over a ProcessGroup. Collective: every rank of the group calls it in the same order.
public protocol ExpertExchange: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Block j of `send` (sendCounts[j] floats) goes to rank j; block i of `receive` comes from rank i.
    func allToAll(_ send: UnsafeMutableBufferPointer<Float>, sendCounts: [Int], into receive: UnsafeMutableBufferPointer<Float>,
                  receiveCounts: [Int]) throws
}

/// The MoE part of a GPT configuration (nil: every block dense).
public struct MoEConfiguration: Codable, Sendable, Equatable {
    public var experts: Int
    public var topK: Int
    /// Places per expert = ceil(k · tokens / experts · factor); 0 is dropless.
    public var capacityFactor: Double
    public var auxiliaryLossCoefficient: Double
    /// Every `every`-th block (blocks every-1, 2·every-1, ...) has a MoE MLP.
    public var every: Int
    /// Places per expert for `rows` tokens of one micro-batch: ceil(top_k · rows / experts · factor)
    /// (Int.max: dropless).
    public func capacity(rows: Int) -> Int {
        guard capacityFactor > 0 else { return Int.max }
        return Int((Double(topK * rows) / Double(experts) * capacityFactor).rounded(.up))
    }

    public init(experts: Int, topK: Int = 1, capacityFactor: Double = 0, auxiliaryLossCoefficient: Double = 0.01, every: Int = 1) {
        self.experts = experts; self.topK = topK; self.capacityFactor = capacityFactor
        self.auxiliaryLossCoefficient = auxiliaryLossCoefficient; self.every = every
    }
    public func isExpertLayer(_ layer: Int) -> Bool { layer % every == every - 1 }
    /// The blocks of a `layers`-block model that have a mixture.
    public func expertLayers(of layers: Int) -> [Int] { (0..<layers).filter(isExpertLayer) }
}

/// Routing figures summed over forwards since the last reset.
public struct MoEStatistics: Sendable, Equatable {
    /// Choices the router made per expert (before capacity).
    public var routed: [Double]
    /// Choices dropped for capacity.
    public var dropped: Double = 0
    public var auxiliaryLoss: Double = 0
    public var forwards = 0
    public init(experts: Int) { routed = Array(repeating: 0, count: experts) }
}

public final class MixtureOfExperts {
    public let router: Linear
    public let fcWeight: Parameter, fcBias: Parameter?, projectionWeight: Parameter, projectionBias: Parameter?
    public let configuration: MoEConfiguration
    let channels: Int, hidden: Int
    public let localExperts: Int
    let exchange: ExpertExchange?
    /// Tensor parallelism: the group over which the experts are split (nil: not split that way).
    let split: TensorParallelism?
    let gelu: GELUForm
    let workspace: Workspace
    public var statistics: MoEStatistics
    /// The auxiliary loss of the last forward (already times α).
    public private(set) var auxiliaryLoss: Float = 0

    // Kept from forward to backward.
    var rows = 0
    var input: UnsafePointer<Float>?
    var probabilities = Tensor(zeros: [0])
    /// Per token and slot: the expert chosen and its gate.
    var choice: [Int] = [], gate: [Float] = []
    /// Tokens whose first choice is each expert (for the auxiliary loss's f).
    var firstChoices: [Int] = []
    /// Kept rows per expert from this rank, and the rows each source sent each local expert.
    var sendCounts: [Int] = [], receiveCounts: [[Int]] = []
    /// Send order -> token and slot.
    var sendToken: [Int] = [], sendSlot: [Int] = []
    var expertInput = Tensor(zeros: [0]), expertHidden = Tensor(zeros: [0]), returned = Tensor(zeros: [0])

    public init(_ parameters: ParameterSet, _ name: String, configuration: MoEConfiguration, hasBias: Bool,
                exchange: ExpertExchange?, split: TensorParallelism? = nil, gelu: GELUForm, workspace: Workspace) {
        self.configuration = configuration
        router = Linear(parameters, name + ".router", hasBias: false)
        fcWeight = parameters[name + ".experts.c_fc.weight"]
        projectionWeight = parameters[name + ".experts.c_proj.weight"]
        fcBias = hasBias ? parameters[name + ".experts.c_fc.bias"] : nil
        projectionBias = hasBias ? parameters[name + ".experts.c_proj.bias"] : nil
        localExperts = fcWeight.shape[0]
        hidden = fcWeight.shape[1]; channels = fcWeight.shape[2]
        self.exchange = (exchange?.size ?? 1) > 1 ? exchange : nil
        self.split = (split?.size ?? 1) > 1 ? split : nil
        precondition(self.exchange == nil || self.split == nil, "experts split over an expert group and a tensor-parallel group at once")
        self.gelu = gelu
        self.workspace = workspace
        statistics = MoEStatistics(experts: configuration.experts)
        let parts = self.exchange?.size ?? self.split?.size ?? 1
        precondition(localExperts * parts == configuration.experts, "\(configuration.experts) experts over \(parts) ranks")
    }

    /// The stacked expert tensors (the router belongs to the block); `parts`: the expert-parallel size
    /// (this rank stacks experts / parts of them).
    public static func registerExperts(_ layout: inout ParameterSet.Layout, _ name: String, channels c: Int, configuration: MoEConfiguration,
                                       bias: Bool, parts: Int = 1) {
        let local = configuration.experts / parts
        layout.add(name + ".experts.c_fc.weight", [local, 4 * c, c])
        if bias { layout.add(name + ".experts.c_fc.bias", [local, 4 * c]) }
        layout.add(name + ".experts.c_proj.weight", [local, c, 4 * c])
        if bias { layout.add(name + ".experts.c_proj.bias", [local, c]) }
    }

    /// The experts' tensors in the flat buffer (registerExperts lays them out together; the router is
    /// the block's).
    public var parameterRange: Range<Int> {
        let last = projectionBias ?? projectionWeight
        return fcWeight.offset..<(last.offset + last.value.count)
    }

    var experts: Int { configuration.experts }
    var topK: Int { configuration.topK }

    /// Places per expert for `rows` tokens (Int.max: dropless).
    public func capacity(rows: Int) -> Int { configuration.capacity(rows: rows) }

    /// y [rows, C] = the mixture's output for x [rows, C] (x is kept until backward).
    public func forward(_ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) throws {
        let e = experts, k = topK, c = channels
        rows = n; input = x
        if probabilities.count != n * e { probabilities = Tensor(zeros: [n, e]) }
        OperationProfile.measure("moe router forward") {
            router.forward(x, rows: n, into: probabilities.data)
            softmaxForward(probabilities.data, into: probabilities.data, rows: n, cols: e)
        }
        route(rows: n)
        // Dispatch: kept rows in (expert, token) order, so each destination's block is contiguous.
        let sent = sendToken.count
        let send = workspace.floats(.expertSend, max(sent * c, 1))
        for s in 0..<sent { (send + s * c).update(from: x + sendToken[s] * c, count: c) }
        try exchangeCounts()
        let received = receivedRows
        if expertInput.count < received * c { expertInput = Tensor(zeros: [received, c]) }
        if expertHidden.count < received * hidden { expertHidden = Tensor(zeros: [received, hidden]) }
        try toExperts(send, into: expertInput.data)
        // The experts, one GEMM pair each over the rows they received (expert-major).
        let output = workspace.floats(.expertOutput, max(received * c, 1))
        let activation = workspace.floats(.blockActivation, max(received * hidden, 1))
        forEachExpert { local, row, count in
            let xe = expertInput.data + row * c, he = expertHidden.data + row * hidden
            OperationProfile.measure("moe experts forward", flops: 4 * Double(count * c * hidden)) {
                gemm(.none, .transposed, m: count, n: hidden, k: c, a: xe, b: fcWeight.value.data + local * hidden * c, c: he)
                if let fcBias { addBias(fcBias.value.data + local * hidden, to: he, rows: count, cols: hidden) }
                geluForward(he, into: activation, count: count * hidden, form: gelu)
                gemm(.none, .transposed, m: count, n: c, k: hidden, a: activation, b: projectionWeight.value.data + local * c * hidden,
                     c: output + row * c)
                if let projectionBias { addBias(projectionBias.value.data + local * c, to: output + row * c, rows: count, cols: c) }
            }
        }
        if returned.count < sent * c { returned = Tensor(zeros: [max(sent, 1), c]) }
        try fromExperts(output, into: returned.data)
        // Combine: each token's kept choices, weighted by their gates.
        y.update(repeating: 0, count: n * c)
        for s in 0..<sent {
            let t = sendToken[s]
            axpy(gate[t * k + sendSlot[s]], returned.data + s * c, y + t * c, count: c)
        }
        auxiliaryLoss = auxiliary(rows: n)
        statistics.auxiliaryLoss += Double(auxiliaryLoss)
        statistics.forwards += 1
    }

    /// Top-k choices, gates and capacity; fills the send order.
    func route(rows n: Int) {
        let e = experts, k = topK
        choice = Array(repeating: 0, count: n * k); gate = Array(repeating: 0, count: n * k)
        firstChoices = Array(repeating: 0, count: e)
        for t in 0..<n {
            let p = probabilities.data + t * e
            // Highest probability first; ties go to the lower expert index.
            var best = 0
            for j in 1..<e where p[j] > p[best] { best = j }
            choice[t * k] = best
            firstChoices[best] += 1
            if k == 2 {
                var second = best == 0 ? 1 : 0
                for j in 0..<e where j != best && p[j] > p[second] { second = j }
                choice[t * k + 1] = second
                let sum = p[best] + p[second]
                gate[t * k] = p[best] / sum; gate[t * k + 1] = p[second] / sum
            } else {
                gate[t * k] = p[best]
            }
        }
        let places = capacity(rows: n)
        var taken = Array(repeating: 0, count: e)
        var kept = Array(repeating: false, count: n * k)
        for slot in 0..<k {
            for t in 0..<n {
                let expert = choice[t * k + slot]
                statistics.routed[expert] += 1
                if taken[expert] < places { taken[expert] += 1; kept[t * k + slot] = true } else { statistics.dropped += 1 }
            }
        }
        // Send order: by expert (so by destination rank), then token.
        sendCounts = taken
        var next = blockOffsets(taken)
        let total = taken.reduce(0, +)
        sendToken = Array(repeating: 0, count: total); sendSlot = Array(repeating: 0, count: total)
        for t in 0..<n {
            for slot in 0..<k where kept[t * k + slot] {
                let expert = choice[t * k + slot]
                let s = next[expert]
                next[expert] += 1
                sendToken[s] = t; sendSlot[s] = slot
            }
        }
    }

    /// Every rank learns how many rows each source sends each of its experts.
    func exchangeCounts() throws {
        if let split {
            // Every rank routed the same rows: this rank's experts take theirs from its own send order.
            receiveCounts = [Array(sendCounts[(split.rank * localExperts)..<((split.rank + 1) * localExperts)])]
            return
        }
        guard let exchange else { receiveCounts = [sendCounts]; return }
        let n = exchange.size, local = localExperts
        let send = UnsafeMutableBufferPointer<Float>.allocate(capacity: experts), receive = UnsafeMutableBufferPointer<Float>.allocate(capacity: experts)
        defer { send.deallocate(); receive.deallocate() }
        for j in 0..<experts { send[j] = Float(sendCounts[j]) }
        try exchange.allToAll(send, sendCounts: Array(repeating: local, count: n), into: receive, receiveCounts: Array(repeating: local, count: n))
        receiveCounts = (0..<n).map { source in (0..<local).map { Int(receive[source * local + $0]) } }
    }

    /// Each local expert with rows this pass: its index, its first row (expert-major) and its row count.
    func forEachExpert(_ body: (_ local: Int, _ row: Int, _ count: Int) -> Void) {
        var row = 0
        for local in 0..<localExperts {
            let count = rowsFor(local)
            if count > 0 { body(local, row, count) }
            row += count
        }
    }

    /// Rows this rank's experts received from all sources this pass.
    var receivedRows: Int { receiveCounts.reduce(0) { $0 + $1.reduce(0, +) } }

    /// Rows from all sources for local expert `local`.
    func rowsFor(_ local: Int) -> Int { receiveCounts.reduce(0) { $0 + $1[local] } }

    /// Send-order rows -> the experts' rows (expert-major: expert, then source, then token), across the group.
    func toExperts(_ send: UnsafeMutablePointer<Float>, into expertRows: UnsafeMutablePointer<Float>) throws {
        if split != nil { return expertRows.update(from: send + splitFirstRow * channels, count: receivedRows * channels) }
        guard let exchange else { return expertRows.update(from: send, count: sendToken.count * channels) }
        let blocks = exchangeBlocks(exchange)
        try exchange.allToAll(UnsafeMutableBufferPointer(start: send, count: sendToken.count * channels), sendCounts: blocks.sent,
                              into: UnsafeMutableBufferPointer(start: blocks.staging, count: blocks.receivedCount), receiveCounts: blocks.received)
        permute(blocks.staging, into: expertRows, sourceMajorToExpertMajor: true)
    }

    /// The experts' rows back to the ranks that sent them, in their send order.
    func fromExperts(_ expertRows: UnsafeMutablePointer<Float>, into sendOrder: UnsafeMutablePointer<Float>) throws {
        if split != nil {
            // The other ranks' experts' rows stay zero here: their outputs are in the others' partial sums.
            let c = channels, first = splitFirstRow, count = receivedRows
            sendOrder.update(repeating: 0, count: first * c)
            (sendOrder + first * c).update(from: expertRows, count: count * c)
            return (sendOrder + (first + count) * c).update(repeating: 0, count: (sendToken.count - first - count) * c)
        }
        guard let exchange else { return sendOrder.update(from: expertRows, count: sendToken.count * channels) }
        let blocks = exchangeBlocks(exchange)
        permute(expertRows, into: blocks.staging, sourceMajorToExpertMajor: false)
        try exchange.allToAll(UnsafeMutableBufferPointer(start: blocks.staging, count: blocks.receivedCount), sendCounts: blocks.received,
                              into: UnsafeMutableBufferPointer(start: sendOrder, count: sendToken.count * channels), receiveCounts: blocks.sent)
    }

    /// Tensor parallelism: the first send-order row routed to this rank's experts.
    var splitFirstRow: Int { split.map { sendCounts[0..<($0.rank * localExperts)].reduce(0, +) } ?? 0 }

    /// Floats this rank sends each rank (its kept rows for that rank's experts) and receives from each
    /// (their rows for this rank's experts), and the staging buffer for the received rows in source order.
    func exchangeBlocks(_ exchange: ExpertExchange) -> (sent: [Int], received: [Int], receivedCount: Int, staging: UnsafeMutablePointer<Float>) {
        let c = channels, local = localExperts
        let sent = (0..<exchange.size).map { d in (0..<local).reduce(0) { $0 + sendCounts[d * local + $1] } * c }
        let received = receiveCounts.map { $0.reduce(0, +) * c }
        let count = received.reduce(0, +)
        return (sent, received, count, workspace.floats(.expertStaging, max(count, 1)))
    }

    /// Received rows are grouped by source, then expert; the experts want them by expert, then source.
    func permute(_ from: UnsafeMutablePointer<Float>, into to: UnsafeMutablePointer<Float>, sourceMajorToExpertMajor: Bool) {
        let c = channels, sources = receiveCounts.count
        var sourceStart = [Int](repeating: 0, count: sources)
        for s in 1..<max(sources, 1) { sourceStart[s] = sourceStart[s - 1] + receiveCounts[s - 1].reduce(0, +) }
        var expertRow = 0
        for local in 0..<localExperts {
            for s in 0..<sources {
                let count = receiveCounts[s][local]
                let sourceRow = sourceStart[s] + receiveCounts[s][0..<local].reduce(0, +)
                if sourceMajorToExpertMajor { (to + expertRow * c).update(from: from + sourceRow * c, count: count * c) }
                else { (to + sourceRow * c).update(from: from + expertRow * c, count: count * c) }
                expertRow += count
            }
        }
    }

    /// α · E · Σ_i f_i P_i over this forward's tokens.
    func auxiliary(rows n: Int) -> Float {
        guard configuration.auxiliaryLossCoefficient > 0, n > 0 else { return 0 }
        var sum = 0.0
        for i in 0..<experts {
            var p = 0.0
            for t in 0..<n { p += Double(probabilities.data[t * experts + i]) }
            sum += Double(firstChoices[i]) / Double(n) * p / Double(n)
        }
        return Float(configuration.auxiliaryLossCoefficient * Double(experts) * sum)
    }

    /// dy: gradient of the output; accumulates into dx and the parameters' gradients. `lossScale` scales
    /// the auxiliary loss's gradient as the main loss's (dy carries it already).
    public func backward(dy: UnsafePointer<Float>, lossScale: Float, dx: UnsafeMutablePointer<Float>) throws {
        guard let x = input else { preconditionFailure("MoE backward before forward") }
        let n = rows, e = experts, k = topK, c = channels, sent = sendToken.count
        // Output gradient of every kept row (gate · dy) and the gates' gradients (dy · expert output).
        let send = workspace.floats(.expertSend, max(sent * c, 1))
        var dGate = [Float](repeating: 0, count: n * k)
        for s in 0..<sent {
            let t = sendToken[s], slot = sendSlot[s]
            let row = dy + t * c
            (send + s * c).update(from: row, count: c)
            scale(send + s * c, by: gate[t * k + slot], count: c)
            dGate[t * k + slot] = dotProduct(row, returned.data + s * c, count: c)
        }
        let received = receivedRows
        let dOutput = workspace.floats(.expertOutput, max(received * c, 1))
        try toExperts(send, into: dOutput)
        let dInput = workspace.floats(.expertInputGradient, max(received * c, 1))
        let activation = workspace.floats(.blockActivation, max(received * hidden, 1))
        let dHidden = workspace.floats(.blockHiddenGradient, max(received * hidden, 1))
        forEachExpert { local, row, count in
            let xe = expertInput.data + row * c, he = expertHidden.data + row * hidden, dye = dOutput + row * c
            OperationProfile.measure("moe experts backward", flops: 8 * Double(count * c * hidden)) {
                geluForward(he, into: activation, count: count * hidden, form: gelu)
                // c_proj: dW += dy^T a, db += colsum(dy), da = dy W.
                gemm(.transposed, .none, m: c, n: hidden, k: count, a: dye, b: activation, beta: 1,
                     c: projectionWeight.gradient.data + local * c * hidden)
                if let projectionBias { addColumnSums(of: dye, rows: count, cols: c, into: projectionBias.gradient.data + local * c) }
                let dActivation = workspace.floats(.blockActivationGradient, count * hidden)
                gemm(.none, .none, m: count, n: hidden, k: c, a: dye, b: projectionWeight.value.data + local * c * hidden, c: dActivation)
                dHidden.update(repeating: 0, count: count * hidden)
                geluBackward(he, dActivation, accumulatingInto: dHidden, count: count * hidden, form: gelu)
                // c_fc: dW += dh^T x, db += colsum(dh), dx = dh W.
                gemm(.transposed, .none, m: hidden, n: c, k: count, a: dHidden, b: xe, beta: 1,
                     c: fcWeight.gradient.data + local * hidden * c)
                if let fcBias { addColumnSums(of: dHidden, rows: count, cols: hidden, into: fcBias.gradient.data + local * hidden) }
                gemm(.none, .none, m: count, n: c, k: hidden, a: dHidden, b: fcWeight.value.data + local * hidden * c, c: dInput + row * c)
            }
        }
        let back = workspace.floats(.expertSend, max(sent * c, 1))
        try fromExperts(dInput, into: back)
        for s in 0..<sent { add(dx + sendToken[s] * c, back + s * c, into: dx + sendToken[s] * c, count: c) }
        if let split { try dGate.withUnsafeMutableBufferPointer { try split.communicator.allreduceSum($0) } }
        // Router: gates -> probabilities (top-2 renormalised), plus the auxiliary loss, then softmax.
        let dProbabilities = workspace.floats(.routerGradient, n * e)
        dProbabilities.update(repeating: 0, count: n * e)
        let p = probabilities.data
        for t in 0..<n {
            let a = choice[t * k]
            if k == 1 {
                dProbabilities[t * e + a] += dGate[t]
            } else {
                let b = choice[t * k + 1], pa = p[t * e + a], pb = p[t * e + b], sum = pa + pb
                let difference = dGate[t * k] - dGate[t * k + 1]
                dProbabilities[t * e + a] += pb * difference / (sum * sum)
                dProbabilities[t * e + b] -= pa * difference / (sum * sum)
            }
        }
        if configuration.auxiliaryLossCoefficient > 0 {
            // d aux / d p[t, i] = α E f_i / N, f_i = first choices of i / N.
            for i in 0..<e {
                let g = lossScale * Float(configuration.auxiliaryLossCoefficient * Double(e) * Double(firstChoices[i]) / Double(n * n))
                for t in 0..<n { dProbabilities[t * e + i] += g }
            }
        }
        let dLogits = workspace.floats(.routerLogitsGradient, n * e)
        dLogits.update(repeating: 0, count: n * e)
        softmaxBackward(p, dProbabilities, accumulatingInto: dLogits, rows: n, cols: e)
        OperationProfile.measure("moe router backward") {
            router.weightBackward(x, dy: dLogits, rows: n)
            if (split?.rank ?? 0) == 0 { router.inputBackward(dy: dLogits, rows: n, dx: dx) }
        }
    }

    /// Bytes kept from forward to backward (this rank's share of the experts' rows included).
    public var activationBytes: Int { 4 * (probabilities.count + expertInput.count + expertHidden.count + returned.count) }
}

/// Offsets of consecutive blocks of the given sizes.
func blockOffsets(_ counts: [Int]) -> [Int] {
    var offsets = [Int](repeating: 0, count: counts.count), total = 0
    for (i, c) in counts.enumerated() { offsets[i] = total; total += c }
    return offsets
}
