"""Turn :class:`monitor.dashboards.Board` into Grafana JSON with grafana-foundation-sdk.

Kept apart from the panel definitions so that those import with the core only; this module
needs the ``ops`` extra (``grafana-foundation-sdk==1769699379!11.6.0``, the Grafana 11.6 build).
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode

from monitor.dashboards import DS, Board, Panel

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid=DS)
HEIGHT = 8


def _query(expr: str, legend: str, ref: str, fmt_heatmap: bool = False) -> Any:
    q = (prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
         .datasource(DATASOURCE).range())
    if fmt_heatmap:
        from grafana_foundation_sdk.models.prometheus import PromQueryFormat

        q = q.format(PromQueryFormat.HEATMAP)
    return q


def _panel(p: Panel) -> Any:
    builder: Any
    if p.kind == "stat":
        builder = stat.Panel()
    elif p.kind == "heatmap":
        builder = (heatmap.Panel().calculate(False)
                   .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME)
                          .scheme("Oranges").steps(64)))
    elif p.kind == "state":
        builder = statetimeline.Panel().mappings([
            dm.ValueMap(options={
                "0": dm.ValueMappingResult(text="ok", color="green", index=0),
                "1": dm.ValueMappingResult(text="drift", color="red", index=1),
            })
        ])
    else:
        builder = timeseries.Panel()
    builder = (builder.title(p.title).datasource(DATASOURCE).unit(p.unit).height(HEIGHT)
               .span(p.width))
    if p.description:
        builder = builder.description(p.description)
    for i, (expr, legend) in enumerate(p.targets):
        builder = builder.with_target(_query(expr, legend, chr(ord("A") + i),
                                             p.kind == "heatmap"))
    return builder


def _variables(board: Board) -> list[Any]:
    out: list[Any] = [gd.DatasourceVariable("datasource").label("Data source").type("prometheus")]
    if board.templated:
        out.append(
            gd.QueryVariable("model").label("Model").datasource(DATASOURCE)
            .query("label_values(repwatch_records_processed_total, model)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
        out.append(
            gd.QueryVariable("version").label("Version").datasource(DATASOURCE)
            .query('label_values(repwatch_records_processed_total{model="$model"}, '
                   "model_version)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_DESC)
        )
    return out


def build(board: Board) -> dict[str, Any]:
    d = (gd.Dashboard(board.title).uid(board.uid).description(board.description)
         .tags(["repwatch"]).refresh("30s").time("now-6h", "now").timezone("browser")
         .editable())
    for var in _variables(board):
        d = d.with_variable(var)
    d = d.annotation(
        gd.AnnotationQuery().name("repwatch alerts").datasource(DATASOURCE).enable(True)
        .icon_color("red").expr(board.annotation)
    )
    d = d.link(gd.DashboardLink("repwatch").type(dm.DashboardLinkType.DASHBOARDS)
               .tags(["repwatch"]).as_dropdown(True).include_vars(True).keep_time(True))
    for title, panels in board.rows:
        if not panels:
            continue
        d = d.with_row(gd.Row(title))
        for p in panels:
            d = d.with_panel(_panel(p))
    doc: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(d.build()))
    return doc
