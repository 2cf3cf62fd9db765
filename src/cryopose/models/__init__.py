"""Neural networks: encoders, Image2Sphere head, Siamese distance network, 3D U-Net."""
