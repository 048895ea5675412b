"""The optional C extension actstat._kernels (actstat/_kernels.c, the fused CPU reductions of
actstat/fused.py). Everything else about the package is in pyproject.toml. Where no C compiler
is found the build says so and goes on without it: actstat then reduces with torch."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# finite-math and reassociation let min, max and the float sums vectorise (_kernels.c says why
# that is safe); no -march: the AVX2 copy is chosen at load time (target_clones)
GCC_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffinite-math-only",
             "-fassociative-math", "-fno-signed-zeros"]
MSVC_FLAGS = ["/O2", "/fp:fast"]


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else GCC_FLAGS
        for extension in self.extensions:
            extension.extra_compile_args = flags
            if self.compiler.compiler_type != "msvc":
                extension.libraries = ["m"]  # frexpf, ldexpf
        super().build_extensions()


setup(ext_modules=[Extension("actstat._kernels", ["actstat/_kernels.c"], optional=True)],
      cmdclass={"build_ext": BuildExt})
