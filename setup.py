"""rtseg: real-time video semantic segmentation."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "rtseg" / "_version.py").read_text(), version)

setup(
    name="rtseg",
    version=version["__version__"],
    description="Real-time video semantic segmentation: compiled engines, keyframe scheduling, streaming",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rtseg", "rtseg.*"]),
    package_data={"rtseg": ["assets/*.pt", "assets/*.json", "bench/*.csv"]},
    install_requires=[
        # CPU machines: install torch==2.13.0 (CPU build) first; GPU machines: a CUDA build.
        # 2.5 is the first whose torch.onnx.export takes external_data (rtseg's dynamo export
        # passes it); 2.4's dynamo=True also ignored input_names, output_names and opset_version.
        "torch>=2.5",
        "numpy>=1.24",
        # Headless OpenCV works on servers without X/GL libraries and on desktops for files,
        # cameras and streams; display:// windows need the GUI build (see README).
        "opencv-python-headless>=4.8",
        "pyzmq>=25",
        "onnx>=1.16",
        "onnxscript>=0.1",
        "onnxruntime>=1.18",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "psutil>=5.9",
    ],
    extras_require={
        "openvino": ["openvino>=2024.0"],
        "tensorrt": ["tensorrt>=10.0,<11"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6", "openvino>=2024.0", "jsonschema>=4.18"],
    },
    entry_points={"console_scripts": ["rtseg=rtseg.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
