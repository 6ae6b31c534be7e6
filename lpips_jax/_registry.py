"""sha256 of each shipped weights file (see weights/README.md for their provenance).

Written by ``python -m convert.build_weights``.
"""

SHIPPED: dict[str, str] = {
    "alex_heads_v0.0.safetensors": "1f6d7f9d57efa6579800412206bbb2e355253ef7484c08313a7c9a4356972cc2",
    "alex_heads_v0.1.safetensors": "c5c5d65f5ad56e49d586e6a9879a8573f9160dae6d4e99761f0222d92c920cc4",
    "alex_shift_tolerant.safetensors": "864d13d64ab49f66e26a9b03c93e5f4fe48d02887c9b7efb02b984f4b098719a",
    "alex_trunk.safetensors": "ff83e3f3333d0dd5a1eb681cac2b2ac63dcd59a27142b8c14806a3843c8ca129",
    "dists_weights.safetensors": "1f1d5c714113669238fc7831ce8677d70ec399c181f5748b3419b741c4229017",
    "elpips_heads.safetensors": "89b2aeed7c98546c5208e1514e52bf1f7bfd6935bca6dde6517d94a22cdf1da0",
    "squeeze_heads_v0.0.safetensors": "6d713c64558cdc51366a0ee1af5d5ad6ebbb99a4c812a0d916d778fb7f715ac9",
    "squeeze_heads_v0.1.safetensors": "fc098ba159850c9ba6c690f680f04c83bf4fd2e1720b4fd0d21a84f23e84a6f7",
    "vgg_heads_v0.0.safetensors": "feb6eb73eae420bcc4b6d7fad6eac595e580d80c32b2d84e3d4d7c3bd9fe1c07",
    "vgg_heads_v0.1.safetensors": "eda9da5fba65c7a6e8d6cda10c64db679bd639b51de185d082c8d60f7679f47e",
    "vgg_shift_tolerant.safetensors": "b6bfffd59fe4ac16803f96f80224ca2b02d2dff14352d44cb831e2137aa2c8c2",
    "vgg_trunk.safetensors": "3a3499a4c8b1d749da8f18d3edd99f43b1b9a291917e3b7c4f315e614d5b166f",
}
