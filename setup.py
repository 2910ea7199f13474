"Install the library from settings.ini (nbdev 2.x keeps its metadata there)."

from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
bench_requirements = cfg.get(
    "bench_requirements", ""
).split()  # only for `make bench`, never in dev
console_scripts = cfg.get("console_scripts", "").split()

setuptools.setup(
    name=cfg["repo"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    keywords=cfg["keywords"],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    # data/, pipelines/ and static/ are folders of files, not packages: name them here and nowhere else (include_package_data
    # would also pick up whatever MANIFEST.in puts in the sdist, and newer setuptools warns that such folders are missing packages).
    # tests/test_wheel.py checks that every file of the package folder is in the wheel.
    include_package_data=False,
    package_data={
        cfg["lib_name"]: [
            "data/*.csv",  # the embedded sample
            "pipelines/*.ipynb",  # the papermill notebooks, copied from nbs/pipelines by tools/sync_pipelines.py
            "static/*",
        ]
    },  # the dashboard page
    install_requires=requirements,
    extras_require={"dev": dev_requirements, "bench": bench_requirements},
    python_requires=">=" + cfg["min_python"],
    zip_safe=False,
    entry_points={
        "console_scripts": console_scripts,
        "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"],
    },
)
