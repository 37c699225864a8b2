import Tensors

public extension Tensor {
    /// N(0, std^2) entries.
    func fillNormal(std: Float, using rng: inout SeededRandom) {
        for i in 0..<count { data[i] = rng.nextNormal() * std }
    }

    /// U(-bound, bound) entries (PyTorch's default Linear init uses bound = 1/sqrt(fan_in)).
    func fillUniform(bound: Float, using rng: inout SeededRandom) {
        for i in 0..<count { data[i] = (rng.nextUnitFloat() * 2 - 1) * bound }
    }
}
