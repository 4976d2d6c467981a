"""Entry point for ``spark-submit``: the same CLI, with the master and resources from spark-submit.

  python -m jobs.spark --zip dist/                       # -> dist/metacurate_pkgs.zip
  spark-submit --master spark://host:7077 --py-files dist/metacurate_pkgs.zip \\
      infra/driver.py run --config run.yaml
"""
import sys

if __name__ == "__main__":
    from jobs.cli import main

    sys.exit(main(sys.argv[1:]))
