from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "dalle2_md" / "version.py").read_text(), version)

setup(
    name="dalle2-md",
    version=version["__version__"],
    description="User-conditioned DALLE2-style generation of radar micro-Doppler gait spectrograms",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["dalle2_md", "dalle2_md.*"]),
    python_requires=">=3.10",
    install_requires=[
        # the user's choice of stack. Lower bounds: the versions the suite passed with; upper: the
        # next major, or the next minor for 0.x packages whose internals we read (dalle2_md/compat.py
        # checks dalle2-pytorch's and x-clip's surface in tests/test_compat.py). torchvision is not
        # listed: nothing here imports it since grids are drawn by dalle2_md/display.py
        # (dalle2-pytorch still pulls it in)
        "torch>=2.1",
        "dalle2-pytorch==1.15.6",
        "accelerate>=1.15,<2",
        "torchmetrics>=1.9,<2",
        "einops>=0.7",
        "x-clip>=0.14.4,<0.15",
        "ema-pytorch>=0.8.3,<0.9",
        "pillow>=10.0",
        "numpy>=1.24",
        "tensorboard>=2.14",
        "click>=8.1",
        # added: STFT/resampling (scipy), code-free weight files (safetensors),
        # the jet lookup table and report plots (matplotlib), progress bars (tqdm)
        "scipy>=1.10",
        "safetensors>=0.4",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        # scikit-learn: the held-out digits set (evaluation.protocol.digits) has its own tests
        "test": ["pytest>=7.4", "scikit-learn>=1.3"],
        # the held-out second data set (scikit-learn's bundled digits: evaluation.protocol.digits)
        "bench": ["scikit-learn>=1.3"],
    },
    entry_points={"console_scripts": ["dalle2-md = dalle2_md.cli:main"]},
)
