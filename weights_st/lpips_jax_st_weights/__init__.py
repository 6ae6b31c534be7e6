"""The ST-LPIPS weights of lpips_jax (alex and vgg), a wheel of their own.

Only data: ``lpips_jax.load(net, variant="shift_tolerant")`` finds the files in this
package's folder. Source and sha256: ``weights/README.md`` of the lpips_jax repository.
"""
