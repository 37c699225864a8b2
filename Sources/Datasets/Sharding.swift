import Tensors

/// DistributedSampler semantics: every epoch all ranks draw the same seeded permutation of 0..<count;
/// rank r takes positions r, r + world, r + 2 world, ... The remainder (count % world) is dropped so that
/// every rank sees the same number of examples (PyTorch's drop_last=True); with one rank nothing is dropped.
public func epochShard(count: Int, epoch: Int, seed: UInt64, rank: Int, worldSize: Int) -> [Int] {
    precondition(worldSize >= 1 && rank >= 0 && rank < worldSize, "rank \(rank) of \(worldSize)")
    var permutation = Array(0..<count)
    var rng = SeededRandom(seed: seed).derived(UInt64(epoch) &+ 0x5EED)
    // Fisher-Yates with our own generator: identical on every rank and platform.
    if count > 1 {
        for i in stride(from: count - 1, to: 0, by: -1) {
            permutation.swapAt(i, rng.nextInt(below: i + 1))
        }
    }
    let perRank = count / worldSize
    return (0..<perRank).map { permutation[$0 * worldSize + rank] }
}
