"""model stage: the generator's levels (packet VAE + mixtures; flow and aggregate where present)
and the generator bundle that holds them. TensorFlow is imported only while training."""
from necst.model.bundle import GeneratorModels, load_generator, save_generator, train_generator
from necst.model.packet import PacketModel

__all__ = ["GeneratorModels", "PacketModel", "load_generator", "save_generator", "train_generator"]
