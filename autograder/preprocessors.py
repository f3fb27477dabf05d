"""An nbgrader preprocessor for feedback that keeps hidden tests hidden."""
from nbformat import NotebookNode
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor

HIDDEN_TESTS = "BEGIN HIDDEN TESTS"


class HideHiddenTestTracebacks(NbGraderPreprocessor):
    """In graded cells holding hidden tests, shorten each error output's traceback to "ename: evalue".

    IPython's tracebacks quote the cell's code, so an error raised by a hidden test (a NameError, say)
    would show that test in the feedback even after ClearHiddenTests removed it from the cell's source.
    Run it before ClearHiddenTests, which removes the marker this looks for.
    """

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if cell.cell_type == "code" and utils.is_grade(cell) and HIDDEN_TESTS in cell.source:
            for output in cell.outputs:
                if output.output_type == "error":
                    output.traceback = [f"{output.ename}: {output.evalue}"]
        return cell, resources
